"""Where facebench finds its data files, datasets and results."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The package is installed editable from the checkout (see the Makefile), so the
# checkout's top-level data folders sit next to it.
PROJECT_ROOT = PACKAGE_DIR.parent
MANIFESTS_DIR = PROJECT_ROOT / "data_manifests"
DEMO_DIR = PACKAGE_DIR / "data" / "demo"
DEFAULT_DATA_ROOT = PROJECT_ROOT / "data"
DEFAULT_RESULTS_DIR = PROJECT_ROOT / "results"
DEFAULT_MODELS_DIR = DEFAULT_DATA_ROOT / "models"


def in_checkout(path: str | os.PathLike) -> Path:
    """``path`` as is when absolute, else relative to the checkout, never to the working directory:
    a notebook's ``grid = "grids/demo.yaml"`` means the same file whether papermill runs it from
    the checkout or JupyterLab from ``notebooks/``.

    >>> in_checkout("grids/demo.yaml") == PROJECT_ROOT / "grids" / "demo.yaml"
    True
    """
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding one sub-folder per dataset (``lfw/``, ``cfp_fp/``, …).

    ``root`` if given, else the ``FACEBENCH_DATA`` environment variable, else
    ``data/`` in the checkout.
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("FACEBENCH_DATA")
    return Path(env).expanduser() if env else DEFAULT_DATA_ROOT


def models_root() -> Path:
    """The folder holding model weight files (``w600k_r50.onnx``, …) that are not pip-installable.

    The ``FACEBENCH_MODELS`` environment variable, else ``data/models/`` in the
    checkout. Relative ``model:`` paths in ``facebench/models.yaml`` resolve here.
    """
    env = os.environ.get("FACEBENCH_MODELS")
    return Path(env).expanduser() if env else DEFAULT_MODELS_DIR
