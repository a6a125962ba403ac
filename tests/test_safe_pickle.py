"""facebench.safe_pickle: plain data (as insightface's .bin files hold it) loads; anything that would run
code is refused before it runs, with an error naming the file and the global."""
import builtins
import codecs
import os
import pickle
import subprocess

import numpy as np
import pytest

import layout_fixtures as fx
from conftest import ROOT
from facebench import safe_pickle
from facebench.safe_pickle import UnsafePickleError


class Payload:
    """Unpickling this calls ``function(*args)``: what a malicious data file does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_python2_bin_with_bytes_blobs():
    blobs = [fx.jpeg_bytes(i, size=8) for i in range(4)] + [b"x" * 300]  # SHORT_BINSTRING and BINSTRING
    data = fx.py2_bin(blobs + [b"y"], [True, False, True])
    assert safe_pickle.loads(data) == (blobs + [b"y"], [True, False, True])
    images, labels = safe_pickle.loads(data)
    assert images == blobs + [b"y"] and labels == [True, False, True]
    assert all(isinstance(b, bytes) for b in images)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_blobs_and_numpy_bools(protocol):
    arrays = [np.frombuffer(fx.jpeg_bytes(i, size=8), np.uint8).reshape(-1, 1) for i in range(4)]
    labels = [np.bool_(True), np.bool_(False)]
    images, issame = safe_pickle.loads(pickle.dumps((arrays, labels), protocol=protocol))
    assert all(isinstance(a, np.ndarray) and a.dtype == np.uint8 for a in images)
    assert [a.tobytes() for a in images] == [a.tobytes() for a in arrays]
    assert [bool(s) for s in issame] == [True, False]


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_containers(protocol):
    doc = {"a": [1, 2, (3, b"\x00\xff")], "b": {1, 2}, "c": frozenset([3]), "d": bytearray(b"ab"), "e": None,
           "f": 1.5, "g": "text", "h": True}
    assert safe_pickle.loads(pickle.dumps(doc, protocol=protocol)) == doc


@pytest.mark.parametrize("function, args", [
    (os.system, ("touch {marker}",)),
    (subprocess.call, (["touch", "{marker}"],)),
    (builtins.eval, ("open({marker!r}, 'w').close()",)),
    (builtins.exec, ("open({marker!r}, 'w').close()",)),
])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_callable_is_refused_and_not_run(tmp_path, function, args, protocol):
    marker = str(tmp_path / "ran")
    args = tuple(a.format(marker=marker) if isinstance(a, str) else [x.format(marker=marker) for x in a]
                 for a in args)
    # the payload comes after plain data, as it would hidden in a .bin's image list
    data = pickle.dumps(([b"\xff\xd8", Payload(function, *args)], [True]), protocol=protocol)
    path = tmp_path / "evil.bin"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError) as info:
        safe_pickle.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: refusing to load global ") and "nothing in the file was run" in msg
    assert function.__name__ in msg
    assert not os.path.exists(marker)
    # the same bytes through pickle itself do run: the test would notice a payload that does nothing
    if function is os.system:
        pickle.loads(data)
        assert os.path.exists(marker)


@pytest.mark.parametrize("payload, refused", [
    (Payload(getattr, b"x", "upper"), "builtin__.getattr"),
    (Payload(codecs.encode, "x", "rot13"), "latin1"),  # an allowed global, with arguments it does not allow
    (Payload(np.load, "x.npy"), "numpy.load"),
    (np.array([1, "a"], dtype=object), "objects"),
    (np.ma.masked_array([1, 2]), "numpy.ma.core"),
    (np.rec.array([(1, 2)], dtype=[("a", "u1"), ("b", "u1")]), "numpy.rec"),
])
def test_unknown_globals_and_objects_are_refused(payload, refused):
    with pytest.raises(UnsafePickleError, match=refused.replace(".", r"\.")):
        safe_pickle.loads(pickle.dumps([b"ok", payload], protocol=2), source="x.bin")


def test_persistent_ids_are_refused():
    import io

    class WithPid(pickle.Pickler):
        def persistent_id(self, obj):
            return "external" if obj == "ref" else None

    buf = io.BytesIO()
    WithPid(buf, protocol=2).dump(["ref"])
    with pytest.raises(UnsafePickleError, match="persistent id 'external'"):
        safe_pickle.loads(buf.getvalue(), source="x.bin")


def test_refused_error_is_a_value_error():
    with pytest.raises(ValueError):
        safe_pickle.loads(pickle.dumps(print))


def test_allowed_callables_cannot_be_modified_by_the_pickle():
    # GLOBAL numpy.dtype, then BUILD with a state dict: would attach attributes to the guard function
    with pytest.raises(UnsafePickleError, match="refusing to set state on _DtypeSpec"):
        safe_pickle.loads(b"\x80\x02cnumpy\ndtype\n}b.")


# ---------------------------------------------------------------- crafted numpy pickles and memory bombs
# Each is a few bytes that, read by an unpickler that lets numpy build its objects as the stream runs,
# corrupts numpy's own uint8/int64 dtype (then crashes or aborts the process) or allocates gigabytes.

def _dtype_op(spec: bytes, state_tail: bytes = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00") -> bytes:
    """GLOBAL numpy.dtype, REDUCE (spec, False, True), BUILD with (3, '|', None, None, None) + tail."""
    return (b"cnumpy\ndtype\nX" + len(spec).to_bytes(4, "little") + spec + b"\x89\x88\x87R"
            b"(K\x03X\x01\x00\x00\x00|NNN" + state_tail + b"tb")


def _array_op(shape: bytes, dtype_op: bytes, raw: bytes) -> bytes:
    """numpy's _reconstruct(ndarray, (0,), b'b'), then BUILD (1, shape, dtype, False, raw)."""
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
            b"(K\x01" + shape + dtype_op + b"\x89" + raw + b"tb")


HOSTILE = {
    # the dtype claims to hold Python objects (flags=1): numpy then treats the bytes as pointers
    "dtype flags": (b"\x80\x02" + _array_op(b"K\x02\x85", _dtype_op(b"i8", b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x01"),
                                            b"C\x10" + b"A" * 16) + b".", "only plain bool and numeric dtypes"),
    # a second BUILD on the memoised dtype after the array was made from it
    "dtype rebuilt": (b"\x80\x02" + _array_op(b"K\x02\x85", _dtype_op(b"u1") + b"q\x07", b"C\x02AA")
                      + b"h\x07(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x01tb\x86.",
                      "second BUILD"),
    "object dtype": (b"\x80\x02" + _dtype_op(b"O") + b".", "only plain bool and numeric dtypes"),
    "ndarray called": (b"\x80\x02cnumpy\nndarray\nK\x02\x85X\x01\x00\x00\x00O\x86R.", "numpy.ndarray called directly"),
    "object array": (b"\x80\x02" + _array_op(b"K\x02\x85", _dtype_op(b"u1"), b"]") + b".", "Python objects"),
    # 35 bytes: bytearray(3 GiB)
    "bytearray bomb": (b"\x80\x02c__builtin__\nbytearray\n\x8a\x05\x00\x00\x00\xc0\x00\x85R.", "only bytes"),
    "bytes bomb": (b"\x80\x02c__builtin__\nbytes\n\x8a\x05\x00\x00\x00\xc0\x00\x85R.", "only empty bytes()"),
    # an array of 3 GiB announced, 2 bytes of data
    "array bomb": (b"\x80\x02" + _array_op(b"\x8a\x05\x00\x00\x00\xc0\x00\x85", _dtype_op(b"u1"), b"C\x02AA") + b".",
                   "needs 3221225472 bytes, the file holds 2"),
    "scalar bomb": (b"\x80\x02cnumpy.core.multiarray\nscalar\n" + _dtype_op(b"u1") + b"C\x02AA\x86R.",
                    "expected 1 bytes"),
    "deep nesting": (b"\x80\x02N" + b"\x85" * 100_000 + b".", "nested more than 64 levels"),
    "self-reference": (b"\x80\x02]q\x00h\x00a.", "nested more than 64 levels"),
}

_RUN_HOSTILE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a bomb that allocates fails loudly here
from facebench import safe_pickle
for name in sys.argv[1:]:
    try:
        safe_pickle.loads(bytes.fromhex(sys.stdin.readline()), source="crafted.bin")
        print(name, "| loaded", flush=True)
    except safe_pickle.UnsafePickleError as exc:
        print(name, "| refused |", str(exc).splitlines()[0], flush=True)
"""


def test_crafted_numpy_pickles_and_memory_bombs_are_refused_without_crashing():
    # In a subprocess limited to 1 GiB of address space: a crash, an abort or an allocation of
    # gigabytes shows as a missing line or a non-zero exit instead of taking the test run down.
    names = list(HOSTILE)
    stdin = "".join(HOSTILE[n][0].hex() + "\n" for n in names)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([os.sys.executable, "-c", _RUN_HOSTILE, *names], input=stdin, capture_output=True,
                          text=True, timeout=60, env=env, cwd=ROOT)
    lines = dict(line.split(" | ", 1) for line in done.stdout.splitlines())
    assert done.returncode == 0 and list(lines) == names, done.stderr[-2000:]
    for name in names:
        assert lines[name].startswith("refused | crafted.bin: ") and HOSTILE[name][1] in lines[name], (name, lines[name])


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_numpy_arrays_and_scalars_rebuilt_exactly(protocol):
    arrays = [np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3)), np.array([1.5, -2.5]),
              np.zeros((0, 3), np.uint8), np.array(3.0, np.float32), np.array([True, False])]
    scalars = [np.bool_(True), np.float32(2.5), np.int64(-3)]
    got_arrays, got_scalars, empty = safe_pickle.loads(pickle.dumps((arrays, scalars, b""), protocol=protocol))
    for got, want in zip(got_arrays, arrays):
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    assert [type(s) for s in got_scalars] == [type(s) for s in scalars] and got_scalars == scalars
    assert empty == b""
