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
    with pytest.raises(UnsafePickleError, match="refusing to set state on _dtype"):
        safe_pickle.loads(b"\x80\x02cnumpy\ndtype\n}b.")
