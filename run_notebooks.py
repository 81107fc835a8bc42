"""Run every chapter in notebooks/ in order, headless, into artifacts/notebooks/ (executed .ipynb + HTML).

    python run_notebooks.py                          # the main job: the whole catalogue (what `make demo` runs)
    python run_notebooks.py --sample 20              # a quick run: 20 products per gender
    python run_notebooks.py --backbone mobilenet_v2 --only 01,03

The notebooks run in a Jupyter kernel of this very Python (registered in its environment as
"fashion-lens"), with papermill filling each notebook's parameters cell. The run stops at the
first failing notebook and says which notebook and which cell failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from fashion_lens.features import weights_file
from fashion_lens.settings import BACKBONES, ENVIRONMENT_VARIABLES, RANDOM_WEIGHTS, Settings, get_settings, show_versions
from fashion_lens.storage import atomic_write, writable_dir

PROJECT_DIR = Path(__file__).resolve().parent
NOTEBOOK_DIR = PROJECT_DIR / "notebooks"
KERNEL_NAME = "fashion-lens"


class NotebookFailed(RuntimeError):
    """A notebook raised an error; the message names the notebook and the cell."""


def notebook_paths(only: str | None = None, folder: Path | None = None) -> list[Path]:
    """The chapters NN_name.ipynb in order; `only` ("01,03") keeps the ones whose number is listed."""
    folder = folder or NOTEBOOK_DIR
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise SystemExit(f"No notebook (NN_name.ipynb) in {folder}.")
    if not only:
        return paths
    wanted = [part.strip().zfill(2) for part in only.split(",") if part.strip()]
    unknown = [number for number in wanted if not any(path.name.startswith(number + "_") for path in paths)]
    if unknown or not wanted:
        raise SystemExit(f"--only {only!r}: no notebook numbered {', '.join(unknown) or '(none given)'}. "
                         f"Available: {', '.join(path.name[:2] for path in paths)}.")
    return [path for path in paths if path.name[:2] in wanted]


# Figures inline even when the caller runs with another matplotlib backend (importing Streamlit,
# for one, sets MPLBACKEND=Agg for the whole process, and kernels inherit the environment).
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def ensure_kernel() -> str:
    """Register (once) a kernel that runs this Python, inside its own environment, and return its name.

    The stock "python3" kernel may resolve to another Python (a user-wide kernelspec wins); the
    notebooks need the one with this project's packages.
    """
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if spec.argv and Path(spec.argv[0]) == Path(sys.executable) and spec.env == KERNEL_ENV:
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    install(kernel_name=KERNEL_NAME, display_name="Python (fashion-lens)", prefix=sys.prefix, env=KERNEL_ENV)
    return KERNEL_NAME


@contextlib.contextmanager
def kernel_messages_to(log_path: Path):
    """Send what the kernels print on their own stderr (TensorFlow and ZMQ notices) to a log file:
    the kernels inherit this process's stderr, file descriptor 2. Errors still reach the user: they
    are raised as exceptions and reported after this block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_notebook(path: Path, output_dir: Path, parameters: dict, kernel_name: str | None = None,
                 html: bool = True) -> dict[str, Path]:
    """Execute one notebook with `parameters`; write the executed notebook (and its HTML) atomically.

    On an error the executed notebook (with the traceback in the failing cell) is still written,
    and NotebookFailed names the notebook and the cell.
    """
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    kernel_name = kernel_name or ensure_kernel()
    output_dir = writable_dir(Path(output_dir))
    executed = output_dir / path.name
    running = output_dir / f".{path.stem}.running.ipynb"  # papermill saves after each cell: keep it out of sight
    try:
        with kernel_messages_to(output_dir / "kernels.log"):
            papermill.execute_notebook(str(path), str(running), parameters=parameters, kernel_name=kernel_name,
                                       language="python", cwd=str(path.parent), progress_bar=False, log_output=False,
                                       # no saved widget state: read without a kernel (HTML, the book), the
                                       # recommender leaves its still picture and progress bars their text
                                       store_widget_state=False,
                                       # TensorFlow's start-up notices go to the log, not into the cells
                                       extra_arguments=["--IPKernelApp.capture_fd_output=False"])
    except PapermillExecutionError as error:
        os.replace(running, executed)
        source = "\n".join("    " + line for line in error.source.splitlines()[:8])
        raise NotebookFailed(
            f"{path.name} failed in code cell [{error.exec_count}] (cell {error.cell_index + 1} of the notebook):\n"
            f"{source}\n{error.ename}: {error.evalue}\nThe executed notebook, with the traceback, is {executed}"
        ) from None
    except Exception as error:  # the kernel died, a cell timed out, the notebook is not valid JSON...
        if running.exists():
            os.replace(running, executed)
        raise NotebookFailed(f"{path.name} could not be run: {type(error).__name__}: {error}") from error
    os.replace(running, executed)
    outputs = {"notebook": executed}
    if html:
        from nbconvert import HTMLExporter

        with kernel_messages_to(output_dir / "kernels.log"):  # nbconvert's notices ("alternative text is missing") too
            body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
        outputs["html"] = executed.with_suffix(".html")
        with atomic_write(outputs["html"]) as handle:
            handle.write(body.encode("utf-8"))
    return outputs


def shared_inputs(parameters: dict, settings: Settings) -> str:
    """A digest of what every chapter's output depends on (see the module's docstring), but the
    notebook itself: computed once per run."""
    digest = hashlib.sha256(json.dumps({"parameters": parameters, "settings": settings, "versions": show_versions()},
                                       sort_keys=True, default=str).encode())
    for source in sorted((PROJECT_DIR / "fashion_lens").glob("*.py")) + [PROJECT_DIR / "helpers.py"]:
        digest.update(source.read_bytes())
    files = sorted(settings.data_dir.rglob("*"))
    if settings.weights != RANDOM_WEIGHTS:
        files.append(weights_file(settings.backbone, settings.weights))
    for file in files:  # size and modification time: a changed photo or table is noticed without reading it
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def inputs_fingerprint(path: Path, shared: str) -> str:
    """A digest of everything one chapter's output depends on: the notebook and the shared inputs."""
    return hashlib.sha256(path.read_bytes() + shared.encode()).hexdigest()


def up_to_date(path: Path, output_dir: Path, fingerprint: str) -> bool:
    """Did this chapter run successfully, with these very inputs, into output_dir?"""
    record = output_dir / f".{path.stem}.inputs"
    return (record.is_file() and record.read_text() == fingerprint and (output_dir / path.name).is_file()
            and (output_dir / f"{path.stem}.html").is_file())


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="use N products per gender (a quick run); default: the whole catalogue")
    parser.add_argument("--backbone", choices=BACKBONES, default=None,
                        help=f"the CNN (default: the {ENVIRONMENT_VARIABLES['backbone']} setting, else resnet50)")
    parser.add_argument("--only", default=None, metavar="01,03", help="run only these chapters (by number)")
    parser.add_argument("--output", type=Path, default=None,
                        help="where the executed notebooks go (default: <artifacts>/notebooks)")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOK_DIR, metavar="FOLDER",
                        help="the folder of numbered chapters to run (default: notebooks/)")
    parser.add_argument("--force", action="store_true",
                        help="run every chapter, even those whose inputs did not change since their last run")
    arguments = parser.parse_args(argv)
    if arguments.sample is not None and arguments.sample < 1:
        parser.error(f"--sample must be 1 or more products per gender (got {arguments.sample}); leave it out for the whole catalogue.")
    return arguments


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the kernels inherit it: fewer CUDA notices
    settings = get_settings(backbone=arguments.backbone)  # a bad setting fails here, before any kernel starts
    output_dir = arguments.output or settings.artifacts_dir / "notebooks"
    parameters = {"BACKBONE": arguments.backbone, "SAMPLE": arguments.sample}
    paths = notebook_paths(arguments.only, arguments.notebooks)
    kernel_name = ensure_kernel()
    writable_dir(output_dir)
    (output_dir / "kernels.log").unlink(missing_ok=True)  # this run's messages only
    scope = f"{arguments.sample} products per gender" if arguments.sample else "the whole catalogue"
    print(f"Running {len(paths)} notebook(s) on {scope}, backbone {settings.backbone}, into {output_dir}", flush=True)
    started, current = time.perf_counter(), 0
    shared = shared_inputs(parameters, settings)
    for path in paths:
        start = time.perf_counter()
        print(f"  {path.name} ...", end=" ", flush=True)
        fingerprint = inputs_fingerprint(path, shared)
        if not arguments.force and up_to_date(path, output_dir, fingerprint):
            print("up to date (its inputs did not change since its last run; --force runs it again)", flush=True)
            current += 1
            continue
        (output_dir / f".{path.stem}.inputs").unlink(missing_ok=True)
        try:
            run_notebook(path, output_dir, parameters, kernel_name)
        except NotebookFailed as error:
            print("FAILED", flush=True)
            print(f"\n{error}", file=sys.stderr)
            return 1
        with atomic_write(output_dir / f".{path.stem}.inputs", "w") as record:
            record.write(fingerprint)
        print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"All {len(paths)} notebook(s) in {time.perf_counter() - started:.0f} s"
          + (f" ({current} up to date, not run again)" if current else ""))
    print(f"\nExecuted notebooks and HTML copies: {output_dir} (the kernels' own messages: kernels.log)")
    print(f"  open {output_dir / (paths[0].stem + '.html')} in a browser to read them")
    print("To run and explore them yourself: make lab   (JupyterLab on notebooks/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
