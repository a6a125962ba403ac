"""A study: a grid of (model, dataset) cells, scored, then rendered, then read, into a book of its own.

A grid file (YAML) holds everything about a study:

``name``
    The study's name (default: the grid file's stem).
``base``
    The folder relative paths resolve against (default: the grid file's folder).
``book``
    The book's root folder, holding its ``_config.yml`` and ``_toc.yml`` (default
    ``studies/<name>``). Run pages go to ``<book>/book/runs/<label>__<dataset>.ipynb``,
    summaries to ``<book>/book/<notebook stem>.ipynb``. A book root other than
    ``base`` gets copies of ``base``'s hand-written pages and configuration, so two
    grids never share a page.
``notebook``
    The run-page template (a jupytext ``.md`` with a cell tagged ``parameters``).
``results_dir``
    Where runs are stored (default: the checkout's ``results/``).
``parameters``
    Defaults for every cell, one of :data:`CELL_KEYS`; an entry may override them.
``models`` / ``datasets``
    Names, or ``{model: NAME, label: NAME, parameters: {...}, shards: N, datasets: [...]}``
    and ``{dataset: NAME, parameters: {...}, shards: N}``. A ``label`` names the
    cell (the same model under other settings needs one); ``datasets`` limits a
    model to some of the grid's datasets.
``headline``
    Optional ``{fr: LABEL, mllm: LABEL, control: LABEL, dataset: NAME}``: the cells
    the book's introduction cites; by default the best face-recognition model and
    the best MLLM of the first dataset, and the control (a registry model with
    ``role: control``) where the grid has one.
``summaries``
    Notebooks rendered after the cells, each with ``grid`` as its parameter.
``shards``
    With Ray, split each cell's scoring into this many tasks (a model entry's
    value wins over a dataset entry's, which wins over the grid's).

Everything is checked before any cell runs: unknown keys, misspelt models,
settings and datasets, and labels or names that are not plain file names.

:func:`run_grid` works in three phases. **Score**: the executor
(:mod:`facebench.executors`, local or Ray) scores every available cell with
:func:`facebench.executors.score_task`, resuming from the store. **Render**:
papermill executes the template for each cell that has no fresh page; the page
only opens the stored run. A page is fresh when its parameters, the template's
sha256, the code's identity and the run's last update all match the ones
recorded in it. A cell whose model is not available, or whose scoring failed,
gets a page that says so, the same from either executor. **Read**: the summaries
read the stored runs of the grid, and the book's table of contents is written
from the grid.
"""
from __future__ import annotations

import atexit
import contextlib
import difflib
import hashlib
import json
import re
import tempfile
import time
from pathlib import Path

import yaml

from facebench.files import file_sha256, read_yaml, write_json_atomic
from facebench.provenance import canonical_hash, git_state, now
from facebench.store import model_slug

STATUS_FILE = "_grid_status.json"
GRID_KEYS = ("version", "name", "base", "book", "notebook", "results_dir", "parameters", "shards", "headline",
             "models", "datasets", "summaries")
# What a grid may set for a cell; the grid adds model, dataset and out.
CELL_KEYS = ("root", "limit", "batch_size", "settings")
# Scoring settings that do not change what a page shows: they stay off the page's parameters.
RUNTIME_KEYS = ("batch_size",)
HEADLINE_ROLES = ("fr", "mllm", "control", "dataset")
# The checkout's hand-written pages and configuration, copied into a book root of its own.
BOOK_PAGES = ("intro", "protocol", "reproduce", "runs")
BOOK_FILES = ("_config.yml", "references.bib")
# A code cell with one of these tags already says how the book shows it.
SHOWN_AS_TAGGED = {"parameters", "injected-parameters", "remove-cell", "remove-input", "remove-output",
                   "hide-input", "hide-cell", "hide-output"}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def load_grid(path) -> dict:
    """Read and check a grid file; relative paths in it resolve against its ``base`` folder.

    A relative ``path`` is relative to the checkout (:func:`facebench.paths.in_checkout`);
    the command line makes its arguments absolute first.

    Raises ``ValueError`` naming the file and the key, model, setting or
    dataset that is wrong, before anything runs.
    """
    from facebench.paths import DEFAULT_RESULTS_DIR, in_checkout

    path = in_checkout(path)
    try:
        doc = read_yaml(path)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a grid file is a mapping of {', '.join(GRID_KEYS)}")
    _refuse_unknown(doc, GRID_KEYS, f"{path}: unknown top-level key(s)")
    for key in ("notebook", "models", "datasets"):
        if key not in doc:
            raise ValueError(f"{path}: grid file lacks {key!r}")
    for key in ("models", "datasets"):
        if not isinstance(doc[key], list) or not doc[key]:
            raise ValueError(f"{path}: {key} must be a list of at least one entry, got {doc[key]!r}")
    if doc.get("version", 1) != 1:
        raise ValueError(f"{path}: version {doc['version']!r} is not one this facebench reads (1)")
    doc["name"] = _plain(doc.get("name", path.stem), f"{path}: name")
    base = (path.parent / doc.get("base", ".")).resolve()
    doc["base"] = base
    doc["notebook"] = base / doc["notebook"]
    doc["book"] = (base / doc.get("book", f"studies/{doc['name']}")).resolve()
    doc["results_dir"] = base / doc["results_dir"] if doc.get("results_dir") else DEFAULT_RESULTS_DIR
    doc["runs_dir"] = doc["book"] / "book" / "runs"
    summaries = []
    for s in doc.get("summaries") or []:
        notebook = s.get("notebook") if isinstance(s, dict) else s
        if not isinstance(notebook, str) or (isinstance(s, dict) and set(s) != {"notebook"}):
            raise ValueError(f"{path}: a summaries entry is a notebook path (or {{notebook: PATH}}), got {s!r}")
        summaries.append({"notebook": base / notebook, "output": doc["book"] / "book" / f"{Path(notebook).stem}.ipynb"})
    doc["summaries"] = summaries
    doc["cells"] = list(_cells(doc, path))
    doc["headline"] = _headline(doc, path)
    return doc


def _refuse_unknown(doc: dict, known, what: str) -> None:
    unknown = sorted(set(doc) - set(known))
    if unknown:
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(str(k), known, 1))
                 else repr(k) for k in unknown]
        raise ValueError(f"{what} {', '.join(hints)}; known: {', '.join(known)}")


def _plain(name, what: str) -> str:
    """``name`` if it is a plain file name (no path separator, no ``..``), else ValueError naming ``what``."""
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{what} {name!r} must be a plain name: letters, digits, '.', '_', '+' or '-', "
                         "no path separator and no '..'")
    return name


def _entry(item, what: str, path) -> tuple[str, dict, int | None, dict]:
    if isinstance(item, str):
        return item, {}, None, {}
    keys = ("parameters", "shards") + (("label", "datasets") if what == "model" else ())
    if not (isinstance(item, dict) and what in item):
        raise ValueError(f"{path}: a {what}s entry must be a name or {{{what}: NAME, parameters: {{...}}}}, "
                         f"got {item!r}")
    _refuse_unknown({k: v for k, v in item.items() if k != what}, keys,
                    f"{path}: {what} entry {item[what]!r} has unknown key(s)")
    params = dict(item.get("parameters") or {})
    _refuse_unknown(params, CELL_KEYS, f"{path}: {what} entry {item[what]!r}: unknown parameter(s)")
    return item[what], params, check_shards(item.get("shards"), path), item


def check_shards(value, source) -> int | None:
    """``value`` as a number of shards (a whole number >= 1, or None for unset); else ValueError naming ``source``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{source}: shards must be a whole number >= 1, got {value!r}")
    return value


def _cells(doc: dict, path):
    from facebench.datasets import known_datasets
    from facebench.models import resolve
    from facebench.registry import UnknownNameError, suggest

    defaults = dict(doc.get("parameters") or {})
    _refuse_unknown(defaults, CELL_KEYS, f"{path}: parameters: unknown key(s)")
    grid_shards = check_shards(doc.get("shards"), path)
    datasets = [_entry(d, "dataset", path) for d in doc["datasets"]]
    for name, *_ in datasets:
        _plain(name, f"{path}: dataset")
        if name not in known_datasets():
            raise UnknownNameError(f"{path}: " + suggest(name, known_datasets(), what="dataset"))
    names = set()
    for m in doc["models"]:
        model, mparams, mshards, entry = _entry(m, "model", path)
        label = _plain(entry["label"], f"{path}: label") if "label" in entry else None
        only = entry.get("datasets")  # e.g. an analysis run on one dataset
        known = [d[0] for d in datasets]
        if only is not None and (not isinstance(only, list) or set(only) - set(known)):
            raise ValueError(f"{path}: model entry {model!r} lists datasets {only!r}; each must be one of "
                             f"the grid's datasets {known}")
        for dataset, dparams, dshards, _ in datasets:
            if only is not None and dataset not in only:
                continue
            params = {**defaults, **mparams, **dparams, "model": model, "dataset": dataset,
                      "out": str(doc["results_dir"])}
            try:  # an unknown model or setting fails the grid here, before any cell runs
                resolve(model, params.get("settings"))
            except (UnknownNameError, ValueError) as exc:
                raise type(exc)(f"{path}: {exc}") from None
            shards = next((n for n in (mshards, dshards, grid_shards) if n is not None), 1)
            # The same model under other settings (a prompt template, both orders)
            # needs a label of its own, or two cells would write one page.
            name = f"{model_slug(label or model)}__{dataset}"
            if name in names:
                raise ValueError(f"{path}: two cells are named {name!r}; give one of the {model!r} entries "
                                 "a label (e.g. {model: NAME, label: NAME-fr, parameters: {settings: {...}}})")
            names.add(name)
            yield {"name": name, "label": label or model, "parameters": params, "shards": shards}


def _headline(doc: dict, path) -> dict:
    wanted = doc.get("headline") or {}
    if not isinstance(wanted, dict):
        raise ValueError(f"{path}: headline is a mapping of {', '.join(HEADLINE_ROLES)}, got {wanted!r}")
    _refuse_unknown(wanted, HEADLINE_ROLES, f"{path}: headline: unknown role(s)")
    labels = {c["label"] for c in doc["cells"]}
    datasets = {c["parameters"]["dataset"] for c in doc["cells"]}
    for role, value in wanted.items():
        if value not in (datasets if role == "dataset" else labels):
            raise ValueError(f"{path}: headline {role}: {value!r} is not one of the grid's "
                             f"{'datasets' if role == 'dataset' else 'model labels'}")
    return wanted


def page_parameters(cell: dict) -> dict:
    """The parameters a cell's page is rendered with: the cell's, less the runtime-only ones."""
    return {k: v for k, v in cell["parameters"].items() if k not in RUNTIME_KEYS}


# ------------------------------------------------------------------ rendering


def notebook_from_source(source: Path, tmpdir: Path) -> Path:
    """A jupytext ``.md`` as an ``.ipynb`` papermill can execute (``.ipynb`` passes through)."""
    if source.suffix == ".ipynb":
        return source
    import jupytext

    target = tmpdir / f"{source.stem}.ipynb"
    jupytext.write(jupytext.read(source), target)
    return target


def check_parameters(notebook: Path, params: dict, *, source: Path) -> None:
    """Refuse parameters the notebook does not declare (papermill would only warn)."""
    import papermill

    declared = set(papermill.inspect_notebook(str(notebook)))
    if not declared:
        raise ValueError(f"{source}: no cell tagged 'parameters'")
    unknown = sorted(set(params) - declared)
    if unknown:
        raise ValueError(f"{source}: unknown parameter(s) {unknown}; the notebook declares {sorted(declared)}")


def notebook_state(path: Path) -> dict | None:
    """Parameters, error flag and facebench status recorded in a page, or None where there is no page."""
    if not path.exists():
        return None
    # Plain JSON, not nbformat: only the metadata is wanted, and a study has many large pages.
    meta = json.loads(path.read_text()).get("metadata", {})
    return {"parameters": meta.get("papermill", {}).get("parameters", {}),
            "exception": bool(meta.get("papermill", {}).get("exception")),
            "status": meta.get("facebench", {}).get("status"), "key": meta.get("facebench", {}).get("key")}


def code_identity() -> dict:
    """What a page depends on besides its template and data: facebench's version, commit and source.

    The sha256 of the package's Python files catches an edit that is not committed yet.
    """
    import facebench
    from facebench.paths import PACKAGE_DIR

    h = hashlib.sha256()
    for file in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(file.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + file.read_bytes())
    return {"version": facebench.__version__, "commit": git_state()["commit"], "source_sha256": h.hexdigest()}


def render_key(template: Path, params: dict, data, *, base: Path, code: dict | None = None) -> str:
    """The key a rendered page records: template bytes, parameters, code (:func:`code_identity`)
    and what it read (``data``).

    Paths under ``base`` (the grid's) count relative to it, so a moved checkout keeps its pages fresh.
    """
    def portable(value):
        if isinstance(value, dict):
            return {k: portable(v) for k, v in value.items()}
        if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(base):
            return Path(value).relative_to(base).as_posix()
        return value

    return canonical_hash({"template": file_sha256(template), "parameters": portable(params),
                           "code": code or code_identity(), "data": data})


class Renderer:
    """Renders notebooks with papermill, one after another in one kernel.

    A fresh kernel per page costs seconds before the first line runs (its start,
    then matplotlib, seaborn and myst-nb's nbformat, whose jsonschema builds a
    grammar on import): most of a 140-page study's render time. Here each page
    still starts from an empty namespace (``%reset -f``) with every figure
    closed, in ``cwd``. The kernel stays warm for the next grid run of this
    process (a notebook session or a test run calls several); it is started
    again when it died, when facebench's code changed since it started (its
    imports would be stale), or after a render was interrupted, and shut down
    when the process exits.

    Examples
    --------
    ``with Renderer(cwd, tmpdir) as r: r.render(source, output, params)``
    """

    _warm: dict = {}  # the process's kernel: "km", "code" (source sha256 at start), "sockets" (its folder)

    def __init__(self, cwd: Path, tmpdir: Path):
        self.cwd, self.tmpdir = Path(cwd), Path(tmpdir)

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None:  # interrupted or failed mid-page: the kernel may still be busy
            self.shutdown()

    @classmethod
    def shutdown(cls) -> None:
        import shutil

        from jupyter_core.utils import run_sync

        km, sockets = cls._warm.pop("km", None), cls._warm.pop("sockets", None)
        if km is not None:
            with contextlib.suppress(Exception):  # a kernel that is already gone
                run_sync(km.shutdown_kernel)(now=True)
        if sockets:
            shutil.rmtree(sockets, ignore_errors=True)

    def _kernel(self):
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        warm, code = self._warm, code_identity()["source_sha256"]
        if warm.get("km") is not None and (warm["code"] != code or not run_sync(warm["km"].is_alive)()):
            self.shutdown()
        if warm.get("km") is None:
            if not warm:
                atexit.register(Renderer.shutdown)
            # Unix sockets in a folder of our own: a TCP kernel warns that its traffic is unencrypted.
            sockets = tempfile.mkdtemp(prefix="facebench-kernel-")
            km = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "kernel"))
            run_sync(km.start_kernel)(cwd=str(self.cwd))
            warm.update(km=km, code=code, sockets=sockets)
            return km
        kc = warm["km"].client()  # what the previous page left behind goes
        kc.start_channels()
        try:
            # No wait_for_ready: the shell channel queues the request until it connects. reset() rather
            # than %reset -f, which collects garbage twice (a quarter of a second each with torch loaded).
            run_sync(kc.execute_interactive)(
                f"get_ipython().reset(new_session=False)\nimport os\nos.chdir({str(self.cwd)!r})\n"
                "import matplotlib.pyplot\nmatplotlib.pyplot.close('all')\ndel os, matplotlib",
                silent=True, store_history=False, timeout=60)
        finally:
            kc.stop_channels()
        return warm["km"]

    def render(self, source: Path, output: Path, params: dict, *, key: str | None = None,
               title: str | None = None) -> None:
        """Execute ``source`` with ``params`` into ``output``, recording ``key`` (see :func:`render_key`)
        and giving it ``title``; a failing cell raises papermill's error after the page is written."""
        import papermill

        notebook = notebook_from_source(source, self.tmpdir)
        check_parameters(notebook, params, source=source)
        output.parent.mkdir(parents=True, exist_ok=True)
        km = self._kernel()
        clients = []  # nbclient leaves the channels of a client it made for our kernel open: each one
        make = km.client  # would buffer every later page's output (5-12 MB a page at the study's size)
        km.client = lambda *a, **k: clients.append(make(*a, **k)) or clients[-1]
        try:
            # The page is written once, at the end (or with its error): papermill's default saves it
            # twice per cell, validated, a third of a page's render time. An interrupted render thus
            # leaves the previous page and its key, which no longer matches: it is rendered again.
            papermill.execute_notebook(str(notebook), str(output), parameters=params, cwd=str(self.cwd),
                                       km=km, kernel_name="python3", progress_bar=False,
                                       request_save_on_cell_execute=False)
        except papermill.PapermillExecutionError:
            _finish_page(output, title=title, key=key)
            raise
        finally:
            del km.client
            for kc in clients:
                kc.stop_channels()
        _finish_page(output, title=title, key=key)


def _finish_page(path: Path, *, title: str | None, key: str | None) -> None:
    """Give a page its own title, hide papermill's cell of machine paths, and record its key and status."""
    import nbformat

    if not path.exists():
        return
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    if title:
        heading = next((c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("# ")), None)
        if heading is not None:
            heading.source = f"# {title}" + heading.source[heading.source.find("\n"):] \
                if "\n" in heading.source else f"# {title}"
    for cell in nb.cells:  # a code cell added in JupyterLab shows its output in the book, not its code
        if cell.cell_type == "code" and not set(cell.metadata.get("tags", [])) & SHOWN_AS_TAGGED:
            cell.metadata["tags"].append("hide-input")
    failed = bool(nb.metadata.get("papermill", {}).get("exception"))
    # A failed render records no key, so the next grid run renders it again.
    nb.metadata["facebench"] = {"status": "failed" if failed else "rendered", "key": None if failed else key}
    nbformat.write(nb, path)


def cell_title(cell: dict) -> str:
    """``dlib on lfw``; a variant shows its settings: ``negative-control (prompt=fr-ouinon) on demo``."""
    p = cell["parameters"]
    settings = p.get("settings") or {}
    model = p["model"] + (" (" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")" if settings else "")
    return f"{model} on {p['dataset']}"


def _papermill_wrote(exc: Exception) -> bool:
    """Whether ``exc`` is a failed cell, whose page papermill wrote with the error in it."""
    from papermill.exceptions import PapermillExecutionError

    return isinstance(exc, PapermillExecutionError)


def write_status_page(output: Path, cell: dict, status: str, text: str, *, trace: str = "") -> None:
    """The page of a cell that has no run to show: its model is not available, or its scoring failed.

    Written directly (no kernel), the same whichever executor scored. A failed
    cell's page is marked as failed the way papermill marks a failed execution,
    so the book and :func:`notebook_state` treat both alike.
    """
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {cell_title(cell)}"), nbformat.v4.new_markdown_cell(text)]
    if trace:
        fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", trace)), default=0))
        nb.cells.append(nbformat.v4.new_markdown_cell(f"{fence}text\n{trace.rstrip()}\n{fence}"))
    nb.metadata["papermill"] = {"parameters": page_parameters(cell), "exception": status == "failed"}
    nb.metadata["facebench"] = {"status": status, "key": None}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, output)


# ------------------------------------------------------------------ the book of a grid


def toc(grid: dict) -> str:
    """The grid's ``_toc.yml``: the hand-written pages, the summaries in grid order, and every
    cell's page listed explicitly under a page per dataset, datasets and models in grid order."""
    by_dataset: dict[str, list[str]] = {}
    for cell in grid["cells"]:
        by_dataset.setdefault(cell["parameters"]["dataset"], []).append(cell["name"])
    runs = [{"file": f"book/runs/{dataset}", "sections": [{"file": f"book/runs/{name}"} for name in names]}
            for dataset, names in by_dataset.items()]
    doc = {"format": "jb-book", "root": "book/intro",
           "chapters": [{"file": "book/protocol"}, *({"file": f"book/{s['output'].stem}"} for s in grid["summaries"]),
                        {"file": "book/reproduce"}, {"file": "book/runs", "sections": runs}]}
    return (f"# Written by `facebench grid` from the grid file of study {grid['name']!r}: "
            "edit the grid, not this file.\n"
            + yaml.safe_dump(doc, sort_keys=False))


def dataset_page(grid: dict, dataset: str) -> str:
    """The page that heads the run pages of one dataset."""
    cells = [c for c in grid["cells"] if c["parameters"]["dataset"] == dataset]
    return (f"(runs_{dataset})=\n# Runs on {dataset}\n\nOne page per model of the grid on {dataset}, "
            f"in grid order ({len(cells)} in all).\n")


def write_book(grid: dict) -> None:
    """The grid's table of contents and dataset pages; for a book root of its own, also
    copies of the checkout's hand-written pages and configuration (files are only
    rewritten when their content changes, so a rebuild leaves no churn)."""
    book, base = grid["book"], grid["base"]
    _write_if_changed(book / "_toc.yml", toc(grid))
    for dataset in dict.fromkeys(c["parameters"]["dataset"] for c in grid["cells"]):
        _write_if_changed(grid["runs_dir"] / f"{dataset}.md", dataset_page(grid, dataset))
    if book == base:
        return
    for name in BOOK_FILES:
        _write_if_changed(book / name, (base / name).read_text())
    for page in BOOK_PAGES:
        _write_if_changed(book / "book" / f"{page}.md", (base / "book" / f"{page}.md").read_text())
    static = book / "book" / "_static"
    if not static.exists():
        static.symlink_to(base / "book" / "_static", target_is_directory=True)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def build_book(path, *, log=print) -> Path:
    """Build the HTML book of the grid at ``path`` (``jupyter-book build -n -W --keep-going``); returns its index."""
    import subprocess
    import sys

    grid = load_grid(path)
    if not (grid["book"] / "_toc.yml").exists():
        raise ValueError(f"{path}: its book has no table of contents yet; run `facebench grid {path}` first")
    jb = Path(sys.executable).parent / "jupyter-book"
    command = [str(jb) if jb.exists() else "jupyter-book", "build", str(grid["book"]), "-n", "-W", "--keep-going"]
    log(" ".join(command))
    done = subprocess.run(command)
    if done.returncode:
        raise RuntimeError(f"the book of {path} did not build (jupyter-book exited {done.returncode}); "
                           "its messages are above")
    return grid["book"] / "_build" / "html" / "index.html"


# ------------------------------------------------------------------ the three phases


def run_grid(path, *, force: bool = False, executor="local", address: str | None = None, shards: int | None = None,
             only: list[str] | None = None, score: bool = True, log=print) -> dict:
    """Score every cell of the grid file at ``path``, render its pages, then its summaries and table of contents.

    Parameters
    ----------
    path : path
        The grid file (see the module docstring).
    force : bool
        Render every page (of the ``only`` cells) again, fresh or not; stored pairs are never scored twice.
    executor : str or executor
        ``"local"`` or ``"ray"`` (:mod:`facebench.executors`), or an executor object.
    address : str, optional
        The Ray cluster to use (``executor="ray"``); None starts a local one.
    shards : int, optional
        Split every cell into this many shards, whatever the grid file says.
    only : list of str, optional
        Cell names or globs (``dlib__*``): score and render just those cells;
        the others keep their pages and recorded status. A name that matches no
        cell is refused.
    score : bool
        False renders from what is stored, scoring nothing (``facebench render``).
    log : callable
        Receives one line per event.

    Returns
    -------
    dict
        The status, also in ``<book>/book/runs/_grid_status.json`` (rewritten
        after each cell): every cell in grid order with ``status`` "complete",
        "partial", "failed", "not available" or, after Ctrl-C, "interrupted",
        and ``failed_summaries`` (summary page → error) where one failed.
        Ctrl-C records the status file and re-raises ``KeyboardInterrupt``.
    """
    from facebench.executors import Job, make_executor

    grid = load_grid(path)
    runs_dir: Path = grid["runs_dir"]
    cells = grid["cells"]
    if shards is not None:
        shards = check_shards(shards, "--shards")
        cells = [{**c, "shards": shards} for c in cells]
    chosen = select_cells(cells, only, source=path)
    runner = make_executor(executor, address=address, temp_dir=runs_dir / ".ray") if isinstance(executor, str) \
        else executor
    status = {"grid": str(Path(path).resolve()), "study": grid["name"], "started": now(), "executor": runner.name,
              "cells": []}
    recorded = recorded_status(runs_dir / STATUS_FILE)
    entries: list[dict] = [{"name": c["name"], "label": c["label"], "page": str(runs_dir / f"{c['name']}.ipynb"),
                            "parameters": c["parameters"], "status": None, "error": None, "seconds": 0.0}
                           if i in chosen else recorded.get(c["name"], {"name": c["name"], "status": "not run"})
                           for i, c in enumerate(cells)]

    def record(**extra) -> None:
        status["cells"] = [e for e in entries if e["status"]]
        write_json_atomic(runs_dir / STATUS_FILE, {**status, **extra})

    with tempfile.TemporaryDirectory() as tmp, Renderer(grid["base"], Path(tmp)) as renderer:
        template = notebook_from_source(grid["notebook"], Path(tmp))
        for cell in cells:  # a parameter the template does not declare fails the grid before any cell runs
            check_parameters(template, page_parameters(cell), source=grid["notebook"])
        unavailable = {m: unavailable_reason(m) for m in dict.fromkeys(c["parameters"]["model"] for c in cells)}

        # 1. Score.
        with runner.session():
            jobs = []
            for i, cell in enumerate(cells):
                if i not in chosen:
                    continue
                here = unavailable[cell["parameters"]["model"]]
                if here and runner.remote:  # its workers decide; a model may live on them only
                    log(f"[{i + 1}/{len(cells)}] {cell['name']}: not available on this machine ({here}); "
                        "the cluster's nodes decide")
                why = runner.unavailable(cell["parameters"]["model"]) or (None if runner.remote else here)
                if why and not _has_rows(cell):  # a run imported or scored elsewhere is shown all the same
                    log(f"[{i + 1}/{len(cells)}] {cell['name']}: not available: {why}")
                    entries[i].update(status="not available", error=why)
                elif not why and score:
                    jobs.append(Job(i, f"[{i + 1}/{len(cells)}] {cell['name']}", cell["name"], cell["parameters"],
                                    cell["shards"]))
            try:
                outcomes = runner.score(jobs, log=log)
            except KeyboardInterrupt:
                for job in jobs:
                    entries[job.index].update(status="interrupted", seconds=round(time.perf_counter() - job.started, 2),
                                              error="stopped (Ctrl-C or SIGTERM); stored pairs are kept and a rerun resumes")
                record(interrupted=now())
                raise
        for job in jobs:
            error, trace = outcomes.get(job.index) or (None, "")
            entries[job.index]["seconds"] = round(time.perf_counter() - job.started, 2)
            if getattr(error, "unavailable", False):  # no node of the cluster could run its model
                entries[job.index].update(status="not available", error=str(error))
                log(f"{job.label}: not available: {error}")
            elif error is not None:
                entries[job.index].update(status="failed", error=_short_error(error), trace=trace)
                log(f"{job.label}: FAILED: {entries[job.index]['error']}")
        record()

        # 2. Render.
        code = code_identity()
        for i, cell in enumerate(cells):
            if i not in chosen:
                continue
            entry, page = entries[i], runs_dir / f"{cell['name']}.ipynb"
            label = f"[{i + 1}/{len(cells)}] {cell['name']}"
            if entry["status"] == "not available":
                write_status_page(page, cell, "not available",
                                  f"**Not available** on the machine that built this book: {entry['error']}")
                continue
            if entry["status"] == "failed":
                write_status_page(page, cell, "failed", f"**Scoring failed**: `{entry['error']}`",
                                  trace=entry.pop("trace", ""))
                record()
                continue
            entry["status"] = _run_status(cell)
            params = page_parameters(cell)
            key = render_key(grid["notebook"], params, _run_updated(cell), base=grid["base"], code=code)
            state = notebook_state(page)
            if not force and state and state["key"] == key:
                log(f"{label}: page is fresh, skipped (--force renders it again)")
                record()
                continue
            log(f"{label}: rendering")
            t0 = time.perf_counter()
            try:
                renderer.render(grid["notebook"], page, params, key=key, title=cell_title(cell))
            except Exception as exc:  # noqa: BLE001 - one failing page must not stop the grid
                entry.update(status="failed", error=_short_error(exc))
                log(f"{label}: page FAILED: {entry['error']}")
                if not _papermill_wrote(exc):  # e.g. the kernel died: the previous page must not stay
                    write_status_page(page, cell, "failed", f"**Rendering failed**: `{entry['error']}`")
            entry["seconds"] = round(entry["seconds"] + time.perf_counter() - t0, 2)
            record()

        # 3. Read: the summaries and the table of contents.
        write_book(grid)
        data = [(e["name"], e["status"], _run_updated(c) if e["status"] in ("complete", "partial") else None)
                for c, e in zip(cells, entries)]
        for s in grid["summaries"]:
            params = {"grid": str(Path(path).resolve())}
            key = render_key(s["notebook"], params, {"grid": Path(path).read_text(), "cells": data},
                             base=grid["base"], code=code)
            state = notebook_state(s["output"])
            if not force and state and state["key"] == key:
                log(f"summary {s['output'].name}: fresh, skipped")
                continue
            log(f"summary {s['output'].name}: rendering")
            try:
                renderer.render(s["notebook"], s["output"], params, key=key)
            except Exception as exc:  # noqa: BLE001 - the other summaries still render
                status.setdefault("failed_summaries", {})[s["output"].name] = _short_error(exc)
                log(f"summary {s['output'].name}: FAILED: {_short_error(exc)}")
    record(finished=now())
    return status


def select_cells(cells: list[dict], only: list[str] | None, *, source) -> set[int]:
    """The indices of the cells whose names match one of the ``only`` patterns (all without ``only``)."""
    import fnmatch

    if not only:
        return set(range(len(cells)))
    names = [c["name"] for c in cells]
    unmatched = [p for p in only if not fnmatch.filter(names, p)]
    if unmatched:
        from facebench.registry import suggest

        raise ValueError(f"{source}: --only " + "; ".join(suggest(p, names, what="cell") for p in unmatched))
    return {i for i, name in enumerate(names) if any(fnmatch.fnmatchcase(name, p) for p in only)}


def recorded_status(path: Path) -> dict[str, dict]:
    """The cells of a status file by name ({} when there is none)."""
    return {c["name"]: c for c in json.loads(path.read_text())["cells"]} if path.exists() else {}


def _run_store(cell: dict):
    from facebench.scoring import run_store

    p = cell["parameters"]
    return run_store(p["model"], p["dataset"], out=p.get("out"), settings=p.get("settings"))


def _has_rows(cell: dict) -> bool:
    return bool(_run_store(cell).done_ids())


def _run_updated(cell: dict) -> str | None:
    """When the cell's run last changed (its manifest's ``updated``): a page older than that is stale."""
    return _run_store(cell).read_manifest().get("updated")


def _run_status(cell: dict) -> str:
    """"complete" when the run holds every pair of the cell (the dataset's, or its ``limit``), else "partial"."""
    store = _run_store(cell)
    manifest = store.read_manifest()
    wanted = cell["parameters"].get("limit") or manifest.get("dataset_pairs")
    done = len(store.done_ids())
    return "complete" if wanted and done >= min(wanted, manifest.get("dataset_pairs") or wanted) else "partial"


def unavailable_reason(model: str) -> str | None:
    """Why ``model`` cannot run on this machine, or None; an unknown name raises."""
    from facebench.models import resolve

    ok, why = resolve(model).availability()
    return None if ok else why


def _short_error(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
    return text.strip().splitlines()[0][:500] if text.strip() else type(exc).__name__
