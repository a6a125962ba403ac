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
- ``builtins``/``__builtin__`` ``bytearray`` (from bytes only: ``bytearray(n)`` would
  allocate ``n`` bytes), ``bytes`` (empty only, as protocols 0–2 write ``b""``),
  ``set``, ``frozenset``: plain containers.

numpy objects are never made while the stream runs: ``numpy.dtype``,
``_reconstruct``, ``_frombuffer`` and ``scalar`` give inert records of their
arguments and state (see :class:`_Spec`), and once the stream has ended each
is built from validated plain data: a bool or numeric dtype string and byte
order, a shape, and bytes that the file holds in full (an array larger than
its data is refused before anything is allocated). A dtype or array changed
in place by a later ``BUILD``, arrays of Python objects, fields, sub-arrays and
data nested more than :data:`MAX_DEPTH` levels deep are refused.
"""
from __future__ import annotations

import builtins
import codecs
import io
import math
import os
import pickle
import re
import reprlib

import numpy as np


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle that asks for something other than plain data; nothing in it was run."""


MAX_DEPTH = 64  # containers nested deeper than this are refused: plain data files nest 3 or 4 levels
_NUMERIC = re.compile(r"[biufc][0-9]{1,2}")  # bool, integer, float and complex dtype strings: 'u1', 'f8', …


class _Spec:
    """Stands for a numpy object while the pickle runs; :func:`loads` builds the real one afterwards.

    A real ``numpy.dtype`` can be changed in place by a later ``BUILD``
    (``dtype.__setstate__``), and an array made from it then points at memory it
    does not own. So the pickle only ever sees these inert records of plain
    data, which accept one ``BUILD`` each, are not hashable (never a set member
    or dict key) and cannot be called; the numpy objects are built once the
    whole stream has run, from validated values.
    """

    __slots__ = ("args", "state")
    __hash__ = None

    def __init__(self, *args):
        self.args, self.state = args, None

    def __setstate__(self, state):
        if self.state is not None:
            raise UnsafePickleError(f"a second BUILD on a numpy {self.kind}: refused")
        self.state = state


class _DtypeSpec(_Spec):
    __slots__ = ()
    kind = "dtype"

    def build(self, source: str) -> np.dtype:
        spec, state = _text(self.args[0]), self.state
        order = "|"
        if state is not None:
            # numpy's own state for a plain dtype: (3, order, None, None, None, -1, -1, 0[, None])
            plain = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                     and all(v is None for v in state[2:5] + state[8:]) and state[5:8] == (-1, -1, 0))
            order = _text(state[1]) if plain else None
        if not (isinstance(spec, str) and _NUMERIC.fullmatch(spec)) or order not in ("<", ">", "|", "="):
            raise UnsafePickleError(f"{source}: numpy dtype {_short(self.args[0])} with state {_short(state)}: "
                                    "only plain bool and numeric dtypes are allowed (no objects, fields or "
                                    "sub-arrays)")
        try:
            return np.dtype(spec if order in "|=" else order + spec)
        except TypeError as exc:
            raise UnsafePickleError(f"{source}: numpy dtype {spec!r}: {exc}") from None


class _ArraySpec(_Spec):
    __slots__ = ()
    kind = "array"

    def build(self, source: str) -> np.ndarray:
        state = self.state
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafePickleError(f"{source}: numpy array with state {_short(state)}: expected numpy's "
                                    "(version, shape, dtype, fortran, bytes)")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DtypeSpec):
            raise UnsafePickleError(f"{source}: numpy array of dtype {_short(dtype)}: only plain numeric arrays "
                                    "are allowed")
        dtype = dtype.build(source)
        if isinstance(raw, str):  # bytes, from a Python 2 pickle read with encoding="latin1"
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafePickleError(f"{source}: numpy array holding {type(raw).__name__}: arrays of Python "
                                    "objects are not allowed")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise UnsafePickleError(f"{source}: numpy array shape {_short(shape)}: expected a tuple of sizes")
        # The data must already be in the file: a shape larger than it is refused, never allocated.
        size = math.prod(shape) * dtype.itemsize
        if size != len(raw):
            raise UnsafePickleError(f"{source}: numpy array of shape {shape} and dtype {dtype} needs {size} bytes, "
                                    f"the file holds {len(raw)} for it")
        return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran in (True, 1) else "C")


class _ScalarSpec(_Spec):
    __slots__ = ()
    kind = "scalar"

    def build(self, source: str):
        dtype, data = (self.args + (None, None))[:2]
        if not isinstance(dtype, _DtypeSpec):
            raise UnsafePickleError(f"{source}: numpy scalar of dtype {_short(dtype)}: only plain numeric "
                                    "scalars are allowed")
        dtype = dtype.build(source)
        if data is None:
            return dtype.type()
        data = data.encode("latin1") if isinstance(data, str) else data
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise UnsafePickleError(f"{source}: numpy scalar of dtype {dtype} from {_short(data)}: expected "
                                    f"{dtype.itemsize} bytes")
        return np.frombuffer(data, dtype, count=1)[0]


def _text(value):
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _short(value) -> str:
    return reprlib.repr(value)  # bounded in length and depth, whatever the pickle built


def _ndarray(*args):
    raise UnsafePickleError("numpy.ndarray called directly: only numpy's own array pickling is allowed")


def _reconstruct(subtype, shape, dtype_code):
    if subtype is not ALLOWED[("numpy", "ndarray")]:
        raise UnsafePickleError(f"numpy _reconstruct of {_short(subtype)}: only plain numpy.ndarray is allowed")
    return _ArraySpec()


def _frombuffer(buffer, dtype, shape, order):
    array = _ArraySpec()
    array.__setstate__((1, shape, dtype, order == "F", buffer))
    return array


def _latin1(text, encoding="utf-8"):
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"_codecs.encode with {encoding!r}: only the latin1 form of bytes is allowed")
    return text.encode("latin1")


def _bytearray(data=b"", encoding=None):
    # bytearray(n) would allocate n bytes: only the forms pickle writes (bytes, or latin1 text) are taken.
    if isinstance(data, str) and encoding is not None:
        return bytearray(_latin1(data, encoding))
    if isinstance(data, (bytes, bytearray)) and encoding is None:
        return bytearray(data)
    raise UnsafePickleError(f"bytearray of {_short(data)}: only bytes are allowed")


def _bytes(*args):
    if args:
        raise UnsafePickleError(f"bytes of {_short(args)}: only empty bytes() is allowed")
    return b""


class _Guarded:
    """A callable the pickle may call but not modify (a BUILD on it is refused)."""

    __slots__ = ("_function",)

    def __init__(self, function):
        self._function = function

    def __call__(self, *args):
        return self._function(*args)

    def __setstate__(self, state):
        raise UnsafePickleError(f"refusing to set state on {self._function.__name__}")


_NUMPY = {"_reconstruct": _Guarded(_reconstruct), "scalar": _Guarded(_ScalarSpec)}
ALLOWED = {
    **{(f"numpy.{core}.multiarray", name): f for core in ("_core", "core") for name, f in _NUMPY.items()},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _Guarded(_frombuffer) for core in ("_core", "core")},
    ("numpy", "ndarray"): _Guarded(_ndarray),
    ("numpy", "dtype"): _Guarded(_DtypeSpec),
    ("_codecs", "encode"): _Guarded(_latin1),
    **{(mod, name): _Guarded(f) for mod in ("builtins", "__builtin__")
       for name, f in (("bytearray", _bytearray), ("bytes", _bytes))},
    **{(mod, name): getattr(builtins, name) for mod in ("builtins", "__builtin__") for name in ("set", "frozenset")},
}


def _finish(value, source: str, depth: int = 0):
    """``value`` with every :class:`_Spec` replaced by the numpy object it stands for."""
    if depth > MAX_DEPTH:
        raise UnsafePickleError(f"{source}: data nested more than {MAX_DEPTH} levels deep; refused")
    if isinstance(value, _Spec):
        return value.build(source)
    if type(value) in (list, tuple):
        return type(value)(_finish(v, source, depth + 1) for v in value)
    if type(value) is dict:
        return {_finish(k, source, depth + 1): _finish(v, source, depth + 1) for k, v in value.items()}
    if type(value) in (set, frozenset):  # members are hashable, so no _Spec; walked for their depth
        for v in value:
            _finish(v, source, depth + 1)
    return value


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

    def load(self):
        """The unpickled data, its numpy objects built from validated values (see :class:`_Spec`)."""
        try:
            return _finish(super().load(), self.source)
        except UnsafePickleError as exc:
            if str(exc).startswith(f"{self.source}: "):
                raise
            raise UnsafePickleError(f"{self.source}: {exc}") from None


def loads(data: bytes, *, source: str = "pickle", encoding: str = "bytes"):
    """Unpickle ``data`` allowing plain data only.

    ``encoding="bytes"`` reads Python 2 ``str`` as ``bytes``, which is what
    insightface's validation files (written by Python 2) need.

    Raises
    ------
    UnsafePickleError
        The pickle names a global outside :data:`ALLOWED`, or builds with an
        allowed one something other than plain data (see the module docstring);
        the message names ``source`` and what was refused.

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
