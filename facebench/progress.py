"""Progress bars for long work, on stderr so ``--json`` output stays clean."""
from __future__ import annotations

import os
import sys

from tqdm import tqdm


def progress(iterable=None, **kwargs):
    """A tqdm bar that stays quiet when FACEBENCH_PROGRESS=0 (tests, papermill logs)."""
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("disable", os.environ.get("FACEBENCH_PROGRESS", "1") == "0")
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
