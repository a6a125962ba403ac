"""Unpickle data files without running anything they carry.

A pickle is a small program: any global it names is imported and may be
called. Dataset files such as insightface's ``lfw.bin`` only need lists,
tuples, bytes, bools, ints and numpy arrays, so :func:`loads` resolves just the
globals that rebuild those and refuses every other one *before* it is looked
up, let alone called. The refusal names the global and the file; nothing that
comes later in the stream runs.

Allowed globals, and why each is needed:

- ``numpy[._core|.core].multiarray._reconstruct``, ``numpy.ndarray``,
  ``numpy.dtype`` (protocols 0–4) and ``numpy[._core|.core].numeric._frombuffer``
  (protocol 5): numpy's own array pickling. ``core`` is the name under numpy 1,
  ``_core`` under numpy 2. Arrays of Python objects are refused.
- ``numpy[._core|.core].multiarray.scalar``: numpy scalars such as ``np.bool_``
  in a label list.
- ``_codecs.encode``, for ``(str, "latin1")`` only: how Python 3 writes
  ``bytes`` at protocol 2 and below.
- ``builtins``/``__builtin__`` ``bytearray``, ``set``, ``frozenset``: plain containers.
"""
from __future__ import annotations

import builtins
import codecs
import io
import os
import pickle

import numpy as np


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle that asks for something other than plain data; nothing in it was run."""


def _reconstruct(subtype, shape, dtype_code):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"numpy _reconstruct of {subtype!r}: only plain numpy.ndarray is allowed")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec.decode("ascii") if isinstance(spec, bytes) else spec, align, copy)
    if dtype.hasobject:
        raise UnsafePickleError(f"numpy dtype {dtype}: arrays of Python objects are not allowed")
    return dtype


def _frombuffer(buffer, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy _frombuffer with dtype {dtype!r}: only plain numeric arrays are allowed")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r}: only plain numeric scalars are allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type()


def _latin1(text, encoding="utf-8"):
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"_codecs.encode with {encoding!r}: only the latin1 form of bytes is allowed")
    return text.encode("latin1")


class _Guarded:
    """A callable the pickle may call but not modify (a BUILD on it is refused)."""

    __slots__ = ("_function",)

    def __init__(self, function):
        self._function = function

    def __call__(self, *args):
        return self._function(*args)

    def __setstate__(self, state):
        raise UnsafePickleError(f"refusing to set state on {self._function.__name__}")


_NUMPY = {"_reconstruct": _Guarded(_reconstruct), "scalar": _Guarded(_scalar)}
ALLOWED = {
    **{(f"numpy.{core}.multiarray", name): f for core in ("_core", "core") for name, f in _NUMPY.items()},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _Guarded(_frombuffer) for core in ("_core", "core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _Guarded(_dtype),
    ("_codecs", "encode"): _Guarded(_latin1),
    **{(mod, name): getattr(builtins, name) for mod in ("builtins", "__builtin__")
       for name in ("bytearray", "set", "frozenset")},
}


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only the globals in :data:`ALLOWED`."""

    def __init__(self, file, *, source: str = "pickle", encoding: str = "bytes"):
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global {module}.{name}: only lists, tuples, dicts, bytes, "
                "bools, ints and numpy arrays are allowed, so nothing in the file was run"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refusing a persistent id {pid!r}; nothing in the file was run")


def loads(data: bytes, *, source: str = "pickle", encoding: str = "bytes"):
    """Unpickle ``data`` allowing plain data only.

    ``encoding="bytes"`` reads Python 2 ``str`` as ``bytes``, which is what
    insightface's validation files (written by Python 2) need.

    Raises
    ------
    UnsafePickleError
        The pickle names a global outside :data:`ALLOWED`; the message names
        ``source`` and the global.

    Examples
    --------
    >>> import pickle
    >>> loads(pickle.dumps(([b"\\xff\\xd8", b"\\x89PNG"], [True])))
    ([b'\\xff\\xd8', b'\\x89PNG'], [True])
    >>> loads(pickle.dumps(print), source="x.bin")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    facebench.safe_pickle.UnsafePickleError: x.bin: refusing to load global builtins.print: ...
    """
    return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()


def load(path: str | os.PathLike, *, encoding: str = "bytes"):
    """:func:`loads` on the contents of ``path``; errors name the file."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, source=str(path), encoding=encoding).load()
