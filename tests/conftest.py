import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.sys.executable).parent

# Progress bars would clutter test logs; the CLI tests that need them set it back.
os.environ.setdefault("FACEBENCH_PROGRESS", "0")


def copy_book_sources(dest: Path) -> Path:
    """The files a book build reads, copied so a test never writes into the checkout."""
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("book", "notebooks", "grids"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("runs", "results.ipynb"))
    return dest


def copy_demo(dest: Path) -> Path:
    """The demo crops copied to ``dest``, so a test can break them without touching the checkout."""
    from facebench.paths import DEMO_DIR

    dest.mkdir(parents=True, exist_ok=True)
    for png in DEMO_DIR.glob("*.png"):
        shutil.copy(png, dest / png.name)
    return dest


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory):
    """A copy of the book sources with the demo grid executed (dlib on demo), shared by the grid and book tests."""
    from facebench.grid import run_grid

    project = copy_book_sources(tmp_path_factory.mktemp("project"))
    status = run_grid(project / "grids" / "demo.yaml", log=lambda *_: None)
    return project, status
