import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.sys.executable).parent

# Progress bars would clutter test logs; the CLI tests that need them set it back.
os.environ.setdefault("FACEBENCH_PROGRESS", "0")
# `make test` runs two pytest-xdist workers on two cores: each torch (and what it starts) keeps to one
# thread, or the two spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests never reach the model hub, and tiny models they build (tiny:<family>)
# land in a folder of this session, not in the user's data/models.
os.environ["HF_HUB_OFFLINE"] = "1"
# The user's models folder, where `make models` put the open models: the fixture
# open_models links them from there, so a test run downloads nothing.
MODELS_CACHE = Path(os.environ.get("FACEBENCH_MODELS") or ROOT / "data" / "models").expanduser()
os.environ["FACEBENCH_MODELS"] = tempfile.mkdtemp(prefix="facebench-test-models-")
atexit.register(shutil.rmtree, os.environ["FACEBENCH_MODELS"], True)


def copy_book_sources(dest: Path) -> Path:
    """The files a book build reads, copied so a test never writes into the checkout."""
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("book", "notebooks", "grids"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("runs", "*.ipynb"))
    return dest


def copy_demo(dest: Path) -> Path:
    """The demo crops copied to ``dest``, so a test can break them without touching the checkout."""
    from facebench.paths import DEMO_DIR

    dest.mkdir(parents=True, exist_ok=True)
    for png in DEMO_DIR.glob("*.png"):
        shutil.copy(png, dest / png.name)
    return dest


def write_grid(path: Path, **changes) -> Path:
    """``grids/demo.yaml`` with ``changes``, written to ``path``; its models are only
    dlib and it names no headline cells unless ``changes`` say otherwise, so a test runs
    no more cells than it needs. A change to None removes the key."""
    import yaml

    doc = yaml.safe_load((ROOT / "grids" / "demo.yaml").read_text())
    doc.update({"models": ["dlib"], "headline": None, **changes})
    path.write_text(yaml.safe_dump({k: v for k, v in doc.items() if v is not None}, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def open_models() -> Path:
    """The open models' files (SFace, the MobileFaceNet, YuNet), verified, linked into this
    session's models folder from :data:`MODELS_CACHE`. A file missing there is fetched into it
    first (what `make models` does), so only a run without `make` ever downloads."""
    from facebench.fetch import fetch, open_names, sidecar_path

    session = Path(os.environ["FACEBENCH_MODELS"])
    for name in open_names():
        cached = fetch(name, folder=MODELS_CACHE, log=None)
        for path in (cached, sidecar_path(cached)):
            if path.exists() and not (session / path.name).exists():
                (session / path.name).symlink_to(path)
    return session


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory, open_models):
    """A copy of the book sources with the demo grid executed (its real models and the control,
    on demo), shared by the grid and book tests."""
    from facebench.grid import run_grid

    project = copy_book_sources(tmp_path_factory.mktemp("project"))
    status = run_grid(project / "grids" / "demo.yaml", log=lambda *_: None)
    return project, status


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` and everything in it made read-only while the block runs: by its permissions, or,
    for root (whom permissions do not stop), by a read-only bind mount. Skips where neither works."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        undo = lambda: [path.chmod(mode) for path, mode in modes.items()]  # noqa: E731
    else:
        done = subprocess.run(["mount", "--bind", "-o", "ro", folder, folder], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot make {folder} read-only for root here: {done.stderr.strip()}")
        undo = lambda: subprocess.run(["umount", folder], check=True)  # noqa: E731
    try:
        try:
            (folder / ".probe").touch()
        except OSError:
            pass
        else:
            pytest.skip(f"{folder} is still writable")
        yield
    finally:
        undo()


# The modules whose tests read the executed demo study (the fixture above). `make test` runs two
# pytest-xdist workers; these modules go to one of them, which executes the study once.
DEMO_MODULES = {"test_book.py", "test_browser.py", "test_grid.py", "test_lab.py", "test_onnx_fr.py", "test_report.py"}


def module_name(nodeid: str) -> str:
    """``test_grid.py`` of ``tests/test_grid.py::test_...``."""
    return Path(nodeid.split("::")[0]).name


def pytest_itemcollected(item):
    if "demo_project" in getattr(item, "fixturenames", ()) and module_name(item.nodeid) not in DEMO_MODULES:
        raise pytest.UsageError(f"{item.nodeid} uses demo_project: add {module_name(item.nodeid)} to DEMO_MODULES "
                                "in tests/conftest.py, or the demo study is executed on both workers")


def pytest_xdist_make_scheduler(config, log):
    """A module's tests on one worker, so its module fixtures (a local Ray, a baseline run) are made
    once; the modules of :data:`DEMO_MODULES` together. (``--dist loadgroup`` would say so with marks,
    but pytest 9.2's node ids no longer carry xdist's group suffix: pytest-dev/pytest-xdist#1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "demo" if module_name(nodeid) in DEMO_MODULES else nodeid.split("::")[0]

    return ByModule(config, log)
