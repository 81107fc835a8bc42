"""Build the executed chapters into a static site (Jupyter Book 1.x) that is read without running anything.

    python build_book.py                                   # the chapters `make demo` executed, into <artifacts>/book
    python build_book.py --notebooks FOLDER --output FOLDER

The sources are assembled in <output>-source/: book/_config.yml, a _toc.yml listing the chapters in
order, an intro page made from README.md's sections, and the executed chapters copied in. The site is
built into a temporary folder that replaces <output> only once the build has succeeded. No notebook is
executed here: the chapters come executed by run_notebooks.py.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from fashion_lens.settings import get_settings
from run_notebooks import notebook_paths

PROJECT_DIR = Path(__file__).resolve().parent
CONFIG = PROJECT_DIR / "book" / "_config.yml"
README = PROJECT_DIR / "README.md"
INPUTS_RECORD = ".book-inputs"  # in the built site: what it was built from (a rerun with the same inputs is skipped)


class BookError(SystemExit):
    """Bad input (missing or failed chapters, a README without the expected sections): the message says what to do."""


def executed_chapters(executed_dir: Path) -> list[Path]:
    """The executed copy of every chapter in notebooks/, in order; each must have run to its end."""
    run = ("make demo   (or, for a quick book: .venv/bin/python run_notebooks.py --sample 20)"
           if executed_dir == (get_settings().artifacts_dir / "notebooks").resolve()
           else f".venv/bin/python run_notebooks.py --output {executed_dir}")
    chapters = [executed_dir / path.name for path in notebook_paths()]
    missing = [path.name for path in chapters if not path.is_file()]
    if missing:
        raise BookError(f"The book shows the executed chapters, and {executed_dir} lacks "
                        f"{'all of them' if len(missing) == len(chapters) else ', '.join(missing)}.\n"
                        f"Execute them first:  {run}")
    for path in chapters:
        if not ran_to_the_end(path):
            raise BookError(f"{path} did not run to its end (a cell failed or never ran): fix it and run it again:  {run}")
    return chapters


def ran_to_the_end(executed: Path) -> bool:
    """Every code cell ran and none raised. (run_notebooks.py keeps the copy of a chapter that failed:
    there one cell holds the traceback and the cells after it never ran.)"""
    cells = [cell for cell in nbformat.read(executed, as_version=4).cells if cell.cell_type == "code"]
    return all(cell.execution_count is not None and all(out.get("output_type") != "error" for out in cell.get("outputs", []))
               for cell in cells)


def chapter_title(notebook) -> str:
    """The chapter's first heading ("01 · Explore the catalogue")."""
    return notebook.cells[0].source.splitlines()[0].lstrip("# ").strip()


def intro_page(readme: str, chapters: list[Path]) -> str:
    """The index page: the README's story (its opening), the chapters as links, then how to run them."""
    parts = re.split(r"^## (.+)\n", readme, flags=re.M)
    sections = dict(zip(parts[1::2], parts[2::2]))
    for name in ("Quick start", "The notebooks"):
        if name not in sections:
            raise BookError(f"{README} has no section '## {name}': build_book.py makes the book's first page from it.")
    title, _, opening = parts[0].partition("\n")
    notebooks = [nbformat.read(path, as_version=4) for path in chapters]
    described = dict(re.findall(r"^\| `(\d\d_\w+)` \| (.+?) \|$", sections["The notebooks"], re.M))
    table = "| chapter | what it shows |\n|---|---|\n" + "".join(
        f"| [{chapter_title(notebook)}]({path.name}) | {described.get(path.stem, '')} |\n"
        for path, notebook in zip(chapters, notebooks))
    # Every chapter is listed (and linked) even if the README's table has not caught up with notebooks/
    the_chapters = re.sub(r"(^\|.*\|\n)+", lambda _: table, sections["The notebooks"], count=1, flags=re.M)
    samples = {notebook.metadata.get("papermill", {}).get("parameters", {}).get("SAMPLE") for notebook in notebooks}
    scope = " and ".join(f"{sample} products per gender" if sample else "the whole catalogue"
                         for sample in sorted(samples, key=lambda sample: sample or 0))
    ran = max(notebook.metadata.get("papermill", {}).get("end_time") or "" for notebook in notebooks)[:10]
    return (f"{title}\n{opening.rstrip()}\n\n"
            f"*These pages show the chapters as `run_notebooks.py` executed them, on {scope}"
            f"{f' ({ran})' if ran else ''}: nothing runs while you read.*\n\n"
            f"## The chapters\n{the_chapters.rstrip()}\n\n## How to run it\n{sections['Quick start'].rstrip()}\n")


def write_sources(source_dir: Path, chapters: list[Path]) -> None:
    """config, toc, intro and the chapters, in a folder emptied first (no chapter of an earlier book lingers)."""
    shutil.rmtree(source_dir, ignore_errors=True)
    source_dir.mkdir(parents=True)
    shutil.copy(CONFIG, source_dir / "_config.yml")
    toc = "format: jb-book\nroot: index\nchapters:\n" + "".join(f"- file: {path.stem}\n" for path in chapters)
    (source_dir / "_toc.yml").write_text(toc, encoding="utf-8")
    # index.md, not intro.md: index.html is then the intro itself, not a redirect to it
    (source_dir / "index.md").write_text(intro_page(README.read_text(encoding="utf-8"), chapters), encoding="utf-8")
    for path in chapters:
        shutil.copy(path, source_dir / path.name)


def fingerprint(source_dir: Path) -> str:
    """What the site depends on: its sources, this script and the Jupyter Book version."""
    from importlib.metadata import version

    digest = hashlib.sha256(f"jupyter-book {version('jupyter-book')}\n".encode() + Path(__file__).read_bytes())
    for path in sorted(source_dir.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def build(source_dir: Path, output: Path, inputs: str) -> None:
    """Build into a temporary folder beside `output`, then swap it in: a failed build leaves the last good book."""
    staging = output.parent / f".{output.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book if jupyter_book.exists() else "jupyter-book"), "build", str(source_dir),
               "--path-output", str(staging), "--all", "--quiet"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
        said = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # jupyter-book colours some lines regardless
        if done.returncode != 0 or not (staging / "_build" / "html" / "index.html").is_file():
            raise BookError(f"jupyter-book build failed ({' '.join(command)}):\n{said[-4000:]}")
        for line in said.splitlines():
            if "WARNING" in line:  # a broken link or an unreadable output: the book is built, but say so
                print(f"  {line}", file=sys.stderr)
        (staging / "_build" / "html" / INPUTS_RECORD).write_text(inputs)  # inside: the swap brings both or neither
        previous = output.parent / f".{output.name}.previous-{os.getpid()}"
        if output.exists():
            os.replace(output, previous)
        os.replace(staging / "_build" / "html", output)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", type=Path, default=None, metavar="FOLDER",
                        help="the executed chapters (default: <artifacts>/notebooks, where run_notebooks.py writes them)")
    parser.add_argument("--output", type=Path, default=None, metavar="FOLDER",
                        help="where the site goes (default: <artifacts>/book); its sources go to FOLDER-source")
    parser.add_argument("--force", action="store_true", help="build even if the chapters did not change since the last build")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    artifacts = get_settings().artifacts_dir
    executed_dir = (arguments.notebooks or artifacts / "notebooks").resolve()
    output = (arguments.output or artifacts / "book").resolve()
    source_dir = output.parent / f"{output.name}-source"
    # Both folders are replaced whole: never a folder this script did not make (say, --output artifacts)
    if output.is_dir() and any(output.iterdir()) and not (output / INPUTS_RECORD).is_file():
        raise BookError(f"{output} is not a book built by build_book.py, and building would replace it: choose another --output.")
    if executed_dir in (output, source_dir):
        raise BookError(f"--output {output} would overwrite the executed chapters: choose another folder.")
    chapters = executed_chapters(executed_dir)
    write_sources(source_dir, chapters)
    inputs = fingerprint(source_dir)
    record = output / INPUTS_RECORD
    if not arguments.force and record.is_file() and record.read_text() == inputs:
        print(f"The book is up to date (the chapters did not change since it was built; --force builds it again): "
              f"open {output / 'index.html'}")
        return 0
    started = time.perf_counter()
    print(f"Building the book of {len(chapters)} executed chapters from {executed_dir} ...", flush=True)
    build(source_dir, output, inputs)
    print(f"Done in {time.perf_counter() - started:.0f} s: open {output / 'index.html'} in a browser "
          f"(sources in {source_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
