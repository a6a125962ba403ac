"""Files on disk: regular files read, the sha256 of a file, YAML read, and JSON written atomically.

Every checksum facebench takes of a file (data pins, published list files,
model weights, the demo's crops) and every JSON document it writes for others
to read (run manifests, lock files, grid status) goes through here.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

CHUNK_SIZE = 1 << 20  # 1 MiB: a file is hashed in pieces, never read whole into memory


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks.

    Parameters
    ----------
    path : path
        The file to hash.

    Returns
    -------
    str
        The hex digest, 64 characters.

    Raises
    ------
    OSError
        Where the file is missing or cannot be read.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "hello.txt"
    ...     _ = path.write_bytes(b"hello")
    ...     file_sha256(path)
    '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824'
    """
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            h.update(chunk)
    return h.hexdigest()


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file (symlinks followed).

    A FIFO would block the reader forever and a device such as ``/dev/zero``
    never ends, so anything but a regular file is refused; the check is made
    on the opened file (non-blocking, so a FIFO without a writer does not hang),
    not on the name, so the file cannot be swapped in between.

    Raises
    ------
    OSError
        Where ``path`` is missing, unreadable or not a regular file; the message names it.

    Examples
    --------
    >>> open_regular("/dev/zero")
    Traceback (most recent call last):
    ...
    OSError: [Errno 22] not a regular file (a character device): '/dev/zero'
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device",
                     stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}
            kind = next((k for test, k in kinds.items() if test(mode)), "special")
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`)."""
    with open_regular(path) as f:
        return f.read()


def write_json_atomic(path: Path, doc: dict) -> None:
    """Write ``doc`` so that readers see the old file or the new one, never half.

    The JSON (indented, keys sorted, other objects as ``str``) goes to a
    temporary file in the same folder, readable by all (0644), flushed to disk,
    then renamed over ``path``; a failure removes the temporary file and leaves
    ``path`` as it was.

    Parameters
    ----------
    path : Path
        Where the document goes; missing parent folders are created.
    doc : dict
        The document.

    Raises
    ------
    TypeError
        Where ``doc`` cannot be written as JSON (e.g. keys of mixed types).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "runs" / "manifest.json"
    ...     write_json_atomic(path, {"model": "dlib", "where": Path("/data")})
    ...     print(path.read_text())
    ...     sorted(p.name for p in path.parent.iterdir())
    {
      "model": "dlib",
      "where": "/data"
    }
    ['manifest.json']
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a manifest is for every reader of the results
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_yaml(path: str | os.PathLike):
    """The YAML document in ``path``, parsed safely (no Python objects), by libyaml's C parser where
    PyYAML was built with it: ten times faster than the pure-Python one on a manifest with pair lists,
    which runs and pages read many times. Errors are :class:`yaml.YAMLError`, as ``yaml.safe_load``'s.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = Path(tmp) / "grid.yaml"
    ...     _ = path.write_text("models: [dlib, sface]")
    ...     read_yaml(path)
    {'models': ['dlib', 'sface']}
    """
    import yaml

    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
