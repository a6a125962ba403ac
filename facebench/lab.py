"""The notebooks `make lab` opens: ``FOLDER/NAME.ipynb`` for each ``NAME.md``, where there is none yet.

    python -m facebench.lab FOLDER NOTEBOOK.md...

JupyterLab picks a file's viewer from its name alone (no setting maps notebooks/*.md and
README.md to different viewers), so the analyses open as notebooks through their jupytext
pairs (jupytext.toml): an .ipynb opens as a notebook, and jupytext reads its cells from the
.md and saves them back there.

A new pair holds no cells, only the kernel's language_info: Lab gives a notebook that lacks
one a placeholder as it opens it, which marks the notebook modified before anyone touched
it. It gets the .md's modification time, so jupytext takes the cells from the .md and has no
newer .ipynb to refuse.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def write_pairs(folder: Path, sources: list[Path]) -> list[Path]:
    """The missing pairs of ``sources`` written into ``folder``; returns those written."""
    written = []
    for source in sources:
        pair = folder / f"{source.stem}.ipynb"
        if pair.exists():  # a pair Lab saved holds the outputs of the user's runs
            continue
        from ipykernel.ipkernel import IPythonKernel  # only here: its import is most of the time

        pair.parent.mkdir(parents=True, exist_ok=True)
        notebook = {"cells": [], "metadata": {"language_info": IPythonKernel.language_info},
                    "nbformat": 4, "nbformat_minor": 5}
        pair.write_text(json.dumps(notebook, indent=1) + "\n")
        stat = source.stat()
        os.utime(pair, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        written.append(pair)
    return written


if __name__ == "__main__":
    write_pairs(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
