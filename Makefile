# The verbs of fashion-lens. Every target creates or reuses the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup data demo book test test-fast lab app bench lint clean

setup: $(INSTALLED)

# Reinstall only when a requirements file changes: a second run is instant.
$(INSTALLED): requirements.txt requirements-test.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 10) else "fashion-lens needs Python 3.10 or newer (3.11 recommended)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

data: setup  ## get the catalogue into data/fashion (or check the folder FASHION_LENS_DATA names)
	$(BIN)/python download_data.py

demo: data  ## the main job: data, features, every notebook executed into artifacts/notebooks
	$(BIN)/python run_notebooks.py

# Not `book: demo`: the book shows whatever run_notebooks.py executed last (the whole catalogue or a
# --sample run) and never executes anything; without executed chapters it says what to run first.
book: setup  ## the executed chapters as a static site in artifacts/book (open artifacts/book/index.html); run `make demo` first
	$(BIN)/python build_book.py

# Two test processes: much of the suite waits on browsers, servers, kernels and Ray workers, so a second
# process uses the idle core. Each test file runs whole in one of them (tests/conftest.py schedules them).
TEST_PROCESSES ?= 2
test: setup  ## the whole test suite on the real catalogue (tests whose inputs are missing skip, and the run says how to get them)
	$(BIN)/python -m pytest -n $(TEST_PROCESSES)

test-fast: setup  ## the fast layer only: no catalogue, weights or browser needed
	$(BIN)/python -m pytest -m fast

lab: setup  ## JupyterLab on the notebooks
	$(BIN)/python -m jupyterlab notebooks

app: setup  ## the Streamlit app on http://localhost:8501
	$(BIN)/python -m streamlit run app.py --browser.gatherUsageStats false

bench: setup  ## the benchmark against the reference method (QUICK=1 for a few minutes)
	$(BIN)/python benchmark.py $(if $(QUICK),--quick,)

lint: setup  ## ruff over the project (CI runs it too)
	$(BIN)/python -m ruff check .

clean:  ## remove generated artifacts (keeps data and the environment)
	rm -rf artifacts/* .pytest_cache
