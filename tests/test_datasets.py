"""The dataset layer: the demo set's pairs table, lazy image decoding, checksums and broken files, subsets,
pair-table validation, the demo's pair recipe and the `datasets` listing."""
import functools
import io
import itertools
import os
import subprocess
import sys
import zlib
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import layout_fixtures as fx
from facebench import demo
from facebench.cli import main
from facebench.datasets import (
    LOADERS,
    PAIR_COLUMNS,
    Dataset,
    DatasetError,
    ImageSource,
    load_dataset,
    load_demo,
    validate_pairs,
)
from facebench.integrity import check_dataset
from facebench.paths import MANIFESTS_DIR

from conftest import ROOT, copy_demo

DEMO_MANIFEST = MANIFESTS_DIR / "demo.yaml"


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def pairs_using(doc, image_id):
    return [i for i, (_, a, b, _) in enumerate(doc["pairs"]) if image_id in (a, b)]


@pytest.fixture(scope="module")
def demo_ds():
    return load_dataset("demo")


@pytest.fixture(scope="module")
def demo_doc():
    return yaml.safe_load(DEMO_MANIFEST.read_text())


@pytest.fixture
def broken_demo(tmp_path, monkeypatch):
    """Make ``load_dataset("demo")`` / ``check_dataset("demo")`` read the demo from a copy in tmp_path."""
    folder = copy_demo(tmp_path / "demo")
    monkeypatch.setitem(LOADERS._entries, "demo", functools.partial(load_demo, folder=folder))
    return folder


# ------------------------------------------------------------------ the demo set


def test_demo_pairs_table(demo_ds):
    p = demo_ds.pairs
    assert demo_ds.name == "demo"
    assert list(p.columns) == PAIR_COLUMNS == ["pair_id", "fold", "image_a", "image_b", "same", "group"]
    assert len(p) == 54
    assert demo_ds.n_folds == 3 and sorted(p["fold"].unique()) == [0, 1, 2]
    assert pd.api.types.is_integer_dtype(p["pair_id"]) and pd.api.types.is_integer_dtype(p["fold"])
    assert pd.api.types.is_string_dtype(p["image_a"]) and pd.api.types.is_string_dtype(p["image_b"])
    assert pd.api.types.is_bool_dtype(p["same"])
    assert all(isinstance(v, str) for v in [*p["image_a"], *p["image_b"]])
    assert p["pair_id"].is_unique and p["pair_id"].tolist() == list(range(54))
    assert int(p["same"].sum()) == 9
    for fold, part in p.groupby("fold"):
        assert int(part["same"].sum()) == 3, fold
        assert int((~part["same"]).sum()) == 15, fold
    assert p["group"].isna().all()


def test_demo_matches_its_manifest(demo_ds, demo_doc):
    rows = demo_ds.pairs[["fold", "image_a", "image_b", "same"]].values.tolist()
    assert rows == demo_doc["pairs"]
    assert demo_ds.info["expected_pairs"] == 54 and demo_ds.info["n_folds_expected"] == 3
    assert demo_ds.expected_sha256 == {im["id"]: im["sha256"] for im in demo_doc["images"]}


def test_demo_images_decode_to_112px_rgb(demo_ds):
    keys = demo_ds.image_keys()
    assert len(keys) == len(set(keys)) == 19
    assert set(keys) == set(demo_ds.pairs["image_a"]) | set(demo_ds.pairs["image_b"])
    # In order of first use.
    assert keys[:2] == [demo_ds.pairs["image_a"][0], demo_ds.pairs["image_b"][0]]
    for key in keys:
        image = demo_ds.images.load(key)
        assert isinstance(image, Image.Image), key
        assert image.mode == "RGB" and image.size == (112, 112), key


def test_each_image_is_decoded_once():
    ds = load_dataset("demo")
    reads = Counter()
    read = ds.images._read

    def counting_read(key):
        reads[key] += 1
        return read(key)

    ds.images._read = counting_read  # test hook: count file reads, the loading logic is untouched
    loaded = {}
    for a, b in ds.pairs[["image_a", "image_b"]].itertuples(index=False):
        loaded.setdefault(a, []).append(ds.images.load(a))
        loaded.setdefault(b, []).append(ds.images.load(b))
    assert set(reads) == set(ds.image_keys())
    assert all(n == 1 for n in reads.values()), reads
    # Every later use gets the same decoded image.
    assert all(all(im is images[0] for im in images) for images in loaded.values())


def test_demo_checksum_stable_and_sensitive(demo_ds, demo_doc):
    again = load_dataset("demo")
    assert again.checksum == demo_ds.checksum
    assert len(demo_ds.checksum) == 64
    flipped = {**demo_doc, "pairs": [list(p) for p in demo_doc["pairs"]]}
    flipped["pairs"][7][3] = not flipped["pairs"][7][3]
    other = load_demo(doc=flipped)
    assert other.checksum != demo_ds.checksum
    # And a flipped label is the only difference between the two.
    diff = other.pairs.compare(demo_ds.pairs)
    assert list(diff.index) == [7]


def test_demo_has_no_checksum_errors(demo_ds):
    assert demo_ds.checksum_errors() == []


# ------------------------------------------------------------------ broken copies


def test_checksum_mismatch_names_the_file(tmp_path, demo_doc):
    folder = copy_demo(tmp_path / "demo")
    victim = folder / "kafka.png"
    victim.write_bytes((folder / "messi.png").read_bytes())  # a valid image, but not this one
    ds = load_demo(folder=folder)
    errors = ds.checksum_errors()
    assert len(errors) == 1
    assert str(victim) in errors[0]
    assert "sha256" in errors[0]
    assert str(pairs_using(demo_doc, "kafka")) in errors[0]
    # The image itself still decodes: only the checksum catches it.
    assert ds.images.load("kafka").size == (112, 112)


def test_load_dataset_refuses_a_checksum_mismatch(broken_demo):
    (broken_demo / "hopper.png").write_bytes((broken_demo / "biden.png").read_bytes())
    with pytest.raises(DatasetError, match="hopper.png") as info:
        load_dataset("demo")
    assert str(broken_demo / "hopper.png") in str(info.value)
    assert "biden.png" not in str(info.value)
    # verify=False loads it anyway.
    assert len(load_dataset("demo", verify=False).pairs) == 54


def test_check_dataset_names_the_pairs_of_a_mismatched_image(broken_demo, demo_doc):
    (broken_demo / "hopper.png").write_bytes((broken_demo / "biden.png").read_bytes())
    report = check_dataset("demo")
    assert len(report["errors"]) == 1
    error = report["errors"][0]
    assert str(broken_demo / "hopper.png") in error
    assert f"used by pairs {pairs_using(demo_doc, 'hopper')}" in error
    assert report["facts"]["location"] == str(broken_demo)


def test_truncated_png_is_a_dataset_error(tmp_path):
    folder = copy_demo(tmp_path / "demo")
    truncate(folder / "obama_2.png")
    ds = load_demo(folder=folder)
    with pytest.raises(DatasetError) as info:
        ds.images.load("obama_2")
    assert str(folder / "obama_2.png") in str(info.value)
    # A failed decode is not cached: every attempt fails the same way.
    with pytest.raises(DatasetError):
        ds.images.load("obama_2")
    # Other images are unaffected.
    assert ds.images.load("obama_1").size == (112, 112)


def test_check_dataset_reports_a_truncated_png(broken_demo, demo_doc):
    truncate(broken_demo / "t1_3.png")
    report = check_dataset("demo")
    path, used_by = str(broken_demo / "t1_3.png"), f"used by pairs {pairs_using(demo_doc, 't1_3')}"
    decode = [e for e in report["errors"] if e.startswith("cannot read image")]
    assert len(decode) == 1
    assert path in decode[0] and used_by in decode[0]
    # The checksum catches it too.
    assert any(path in e and "sha256" in e and used_by in e for e in report["errors"])
    assert len(report["errors"]) == 2
    assert report["facts"]["pairs"] == 54


def test_missing_image_names_the_file(broken_demo, demo_doc):
    missing = broken_demo / "collins.png"
    missing.unlink()
    ds = load_demo(folder=broken_demo)
    with pytest.raises(DatasetError) as info:
        ds.images.load("collins")
    assert str(missing) in str(info.value)
    errors = ds.checksum_errors()
    assert len(errors) == 1 and str(missing) in errors[0] and "cannot read" in errors[0]
    with pytest.raises(DatasetError, match="collins.png"):
        load_dataset("demo")
    report = check_dataset("demo")
    used_by = f"used by pairs {pairs_using(demo_doc, 'collins')}"
    assert len(report["errors"]) == 2
    assert all(str(missing) in e and used_by in e for e in report["errors"])


def test_pairs_using_an_unknown_image_id(demo_doc):
    doc = {**demo_doc, "pairs": [*demo_doc["pairs"], [0, "obama_1", "nobody", False]]}
    with pytest.raises(DatasetError, match="nobody"):
        load_demo(doc=doc)


# ------------------------------------------------------------------ subset


def test_subset_balances_folds_and_labels(demo_ds):
    sub = demo_ds.subset(12)
    p = sub.pairs
    assert len(p) == 12
    assert p["pair_id"].is_monotonic_increasing and set(p["pair_id"]) <= set(demo_ds.pairs["pair_id"])
    assert p.groupby("fold").size().to_dict() == {0: 4, 1: 4, 2: 4}
    for fold, part in p.groupby("fold"):
        assert part["same"].sum() == 2 and (~part["same"]).sum() == 2, fold
    # The rows are the full table's rows, unchanged.
    full = demo_ds.pairs.set_index("pair_id").loc[p["pair_id"]].reset_index()
    pd.testing.assert_frame_equal(p, full)
    assert sub.info["limit"] == 12 and "limit" not in demo_ds.info
    assert sub.images is demo_ds.images
    assert len(demo_ds.pairs) == 54  # the original is left alone


def test_subset_small_limits_keep_both_labels(demo_ds):
    p = demo_ds.subset(6).pairs
    assert len(p) == 6 and p["fold"].value_counts().to_dict() == {0: 2, 1: 2, 2: 2}
    assert p["same"].sum() == 3
    p = demo_ds.subset(2).pairs
    assert len(p) == 2 and set(p["same"]) == {True, False}


@pytest.mark.parametrize("limit", [None, 54, 1000])
def test_subset_of_everything_is_everything(demo_ds, limit):
    sub = demo_ds.subset(limit)
    assert len(sub.pairs) == 54
    pd.testing.assert_frame_equal(sub.pairs, demo_ds.pairs)


@pytest.mark.parametrize("limit", [0, -3])
def test_subset_rejects_limits_below_one(demo_ds, limit):
    with pytest.raises(ValueError, match="at least 1"):
        demo_ds.subset(limit)


# ------------------------------------------------------------------ validate_pairs


def _pairs(**columns):
    table = dict(pair_id=[10, 11, 12, 13], fold=[0, 0, 1, 1], image_a=["a", "b", "c", "d"],
                 image_b=["b", "c", "d", "a"], same=[True, False, True, False])
    table.update(columns)
    return pd.DataFrame(table)


def test_validate_pairs_normalises_a_good_table():
    table = _pairs(same=[1, 0, 1, 0], fold=[0.0, 0.0, 1.0, 1.0])
    out = validate_pairs(table, source="mine.csv")
    assert list(out.columns) == PAIR_COLUMNS
    assert out["same"].tolist() == [True, False, True, False] and pd.api.types.is_bool_dtype(out["same"])
    assert pd.api.types.is_integer_dtype(out["fold"])
    assert out["group"].isna().all()
    assert "group" not in table  # the input is not modified


def test_validate_pairs_duplicate_ids():
    with pytest.raises(DatasetError) as info:
        validate_pairs(_pairs(pair_id=[10, 11, 11, 13]), source="pairs.csv")
    msg = str(info.value)
    assert "pairs.csv" in msg and "duplicate" in msg and "[11]" in msg


def test_validate_pairs_label_not_bool():
    with pytest.raises(DatasetError) as info:
        validate_pairs(_pairs(same=[True, "yes", False, True]), source="pairs.csv")
    msg = str(info.value)
    assert "pairs.csv" in msg and "[11]" in msg and "label" in msg


def test_validate_pairs_missing_column():
    with pytest.raises(DatasetError) as info:
        validate_pairs(_pairs().drop(columns="image_b"), source="pairs.csv")
    msg = str(info.value)
    assert "pairs.csv" in msg and "image_b" in msg


def test_validate_pairs_missing_fold_names_source_and_pair():
    with pytest.raises(DatasetError) as info:
        validate_pairs(_pairs(fold=[0, None, 1, 1]), source="pairs.csv")
    assert "pairs.csv" in str(info.value) and "11" in str(info.value)


def test_validate_pairs_missing_image_key_names_source_and_pair():
    with pytest.raises(DatasetError) as info:
        validate_pairs(_pairs(image_a=["a", None, "c", "d"]), source="pairs.csv")
    assert "pairs.csv" in str(info.value) and "11" in str(info.value)


def test_dataset_validates_its_pairs():
    with pytest.raises(DatasetError, match=r"lfw.*duplicate pair ids \[10\]"):
        Dataset("lfw", _pairs(pair_id=[10, 10, 12, 13]), images=None)


# ------------------------------------------------------------------ demo.make_pairs


IDENTITIES = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "b3": "B", "c1": "C", "d1": "D", "e1": "E"}


def test_make_pairs_is_deterministic_and_complete():
    pairs = demo.make_pairs(IDENTITIES, n_folds=3, n_impostor=12, seed=7)
    assert pairs == demo.make_pairs(IDENTITIES, n_folds=3, n_impostor=12, seed=7)
    assert pairs != demo.make_pairs(IDENTITIES, n_folds=3, n_impostor=12, seed=8)
    genuine = [(a, b) for f, a, b, same in pairs if same]
    impostor = [(a, b) for f, a, b, same in pairs if not same]
    expected = {(a, b) for a, b in itertools.combinations(sorted(IDENTITIES), 2) if IDENTITIES[a] == IDENTITIES[b]}
    assert len(genuine) == len(set(genuine)) == 6 and set(genuine) == expected
    assert len(impostor) == len(set(impostor)) == 12
    assert all(IDENTITIES[a] != IDENTITIES[b] and a < b for a, b in impostor)
    per_fold = Counter(f for f, _, _, same in pairs if same)
    assert per_fold == {0: 2, 1: 2, 2: 2}
    assert Counter(f for f, _, _, same in pairs if not same) == {0: 4, 1: 4, 2: 4}
    assert pairs == sorted(pairs, key=lambda p: (p[0], not p[3]))


def demo_looks(demo_doc):
    """Each demo crop's look, read from its pixels: grayscale when its three channels are equal."""
    from facebench.paths import DEMO_DIR

    looks = {}
    for im in demo_doc["images"]:
        rgb = np.asarray(Image.open(DEMO_DIR / im["file"]).convert("RGB")).astype(int)
        looks[im["id"]] = "grayscale" if not np.abs(np.diff(rgb, axis=2)).any() else "colour"
    return looks


def test_make_pairs_reproduces_the_demo_manifest(demo_doc):
    recipe = yaml.safe_load((MANIFESTS_DIR / "demo_recipe.yaml").read_text())
    identities = {im["id"]: im["identity"] for im in demo_doc["images"]}
    looks = demo_looks(demo_doc)
    assert looks == {im["id"]: im["look"] for im in demo_doc["images"]}
    pairs = demo.make_pairs(identities, n_folds=recipe["n_folds"], n_impostor=recipe["n_impostor_pairs"],
                            seed=recipe["seed"], looks=looks)
    assert pairs == demo_doc["pairs"]


def test_make_pairs_matches_the_genuine_pairs_looks():
    looks = {"a1": "g", "a2": "g", "a3": "g", "b1": "c", "b2": "c", "c1": "g", "d1": "g", "g1": "g", "e1": "c",
             "f1": "c"}
    identities = {k: k[0] for k in looks}
    pairs = demo.make_pairs(identities, n_folds=2, n_impostor=12, seed=1, looks=looks)
    kinds = Counter((same, tuple(sorted((looks[a], looks[b])))) for _, a, b, same in pairs)
    # genuine: a's three pairs are grayscale, b's one is colour: 3 to 1, so 9 and 3 impostor pairs, none mixed
    assert kinds == {(True, ("g", "g")): 3, (True, ("c", "c")): 1, (False, ("g", "g")): 9, (False, ("c", "c")): 3}
    # 20 impostor pairs would need 15 grayscale ones; a x {c, d, g} and c, d, g among themselves give 12
    with pytest.raises(ValueError, match=r"needs 15 impostor pairs of two g and g images, but the faces give only 12"):
        demo.make_pairs(identities, n_folds=2, n_impostor=20, seed=1, looks=looks)


@pytest.mark.parametrize("statistic", ["saturation", "both grayscale"])
def test_no_identity_free_statistic_of_colour_tells_the_demo_pairs_apart(demo_doc, statistic):
    """A score that knows colour and nothing about faces must stay at chance on the demo pairs,
    judged two-sided against label shuffles. Under the recipe's old uniform impostor sampling it
    did not: 6 of the 9 genuine pairs are grayscale Yale lightings."""
    from facebench.metrics import auc_permutation_test
    from facebench.paths import DEMO_DIR

    saturation = {im["id"]: np.asarray(Image.open(DEMO_DIR / im["file"]).convert("HSV"))[..., 1].mean()
                  for im in demo_doc["images"]}

    def score(a, b):
        if statistic == "saturation":
            return -abs(saturation[a] - saturation[b])
        return float(saturation[a] == saturation[b] == 0)

    def judged(pairs):
        return auc_permutation_test([score(a, b) for _, a, b, _ in pairs], [same for *_, same in pairs])

    assert judged(demo_doc["pairs"])["near_chance"], judged(demo_doc["pairs"])
    recipe = yaml.safe_load((MANIFESTS_DIR / "demo_recipe.yaml").read_text())
    uniform = demo.make_pairs({im["id"]: im["identity"] for im in demo_doc["images"]}, n_folds=3,
                              n_impostor=recipe["n_impostor_pairs"], seed=recipe["seed"])
    confounded = judged(uniform)
    assert not confounded["near_chance"] and confounded["auc"] > 0.7, confounded


def test_demo_is_built():
    assert demo.is_built() is True


def test_is_built_notices_a_changed_crop(tmp_path):
    folder = copy_demo(tmp_path / "demo")
    assert demo.is_built(out_dir=folder) is True
    truncate(folder / "yale_1.png")
    assert demo.is_built(out_dir=folder) is False
    assert demo.is_built(manifest=tmp_path / "absent.yaml") is False


# ------------------------------------------------------------------ the datasets listing


def test_datasets_listing_shows_the_public_sets(tmp_path, capsys):
    root = tmp_path / "root"
    fx.make_lfw(root / "lfw", n_sets=10, per_kind=2)
    assert main(["datasets", "--root", str(root)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line and line[0] != " "}
    assert set(lines) >= {"lfw", "rfw", "calfw", "cplfw", "cfp_ff", "cfp_fp", "agedb_30", "vgg2_fp", "demo"}
    assert "available: 40 pairs, 10 folds" in lines["lfw"] and "not available" in lines["agedb_30"]


# ------------------------------------------------------------------ hostile and unusual images


def png_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, idat: bytes = b"") -> bytes:
    """A PNG that announces ``width`` × ``height`` pixels; the pixel data (``idat``, compressed) may be absent."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([bit_depth, colour_type, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def source_of(files: dict, **options) -> ImageSource:
    return ImageSource(lambda k: files[k], lambda k: f"/data/{k}", **options)


def test_16_bit_and_float_images_are_scaled_not_clipped():
    grey16 = np.full((3, 4), 40000, ">u2")  # 40000 of 65535 is 155.6 of 255
    png16 = png_header(4, 3, 16, 0, zlib.compress(b"".join(b"\x00" + row.tobytes() for row in grey16)))
    buf = io.BytesIO()
    Image.fromarray(np.full((3, 4), 0.25, np.float32)).save(buf, format="TIFF")  # mode F
    pgm16 = b"P5 4 3 65535\n" + np.full((3, 4), 65535, ">u2").tobytes()  # PIL reads it as mode I
    files = {"png16": png16, "float": buf.getvalue(), "pgm16": pgm16}
    images = source_of(files)
    assert Image.open(io.BytesIO(png16)).mode == "I;16" and Image.open(io.BytesIO(pgm16)).mode == "I"
    for key, value in (("png16", 156), ("float", 64), ("pgm16", 255)):
        pixels = np.asarray(images.load(key))
        assert images.load(key).mode == "RGB" and pixels.shape == (3, 4, 3) and (pixels == value).all(), key


@pytest.mark.parametrize("values, message", [(np.full((2, 2), 3.0, np.float32), "float images in 0–1"),
                                             (np.full((2, 2), np.nan, np.float32), "float images in 0–1"),
                                             (np.full((2, 2), 70000, np.int32), "integer images in 0–65535")])
def test_images_of_unknown_scale_are_errors_naming_the_file(values, message):
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="TIFF")
    with pytest.raises(DatasetError, match=f"cannot read image /data/odd.tif: .*{message}"):
        source_of({"odd.tif": buf.getvalue()}).load("odd.tif")


def test_large_jpeg_is_decoded_small_and_its_landmarks_follow(monkeypatch):
    from facebench import datasets

    monkeypatch.setattr(datasets, "MAX_SIDE", 64)
    monkeypatch.setattr(datasets, "MAX_PIXELS", 400 * 300 - 1)  # the full JPEG would be refused
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buf, "JPEG")
    files = {"big.jpg": buf.getvalue(), "big.png": png_header(400, 300)}
    points = np.array([[200.0, 150.0], [100.0, 30.0]])
    images = source_of(files, landmarks=lambda k: points)
    # landmarks asked for before the image is loaded are the file's own coordinates
    assert np.array_equal(images.landmarks("big.jpg"), points)
    image = images.load("big.jpg")
    assert image.size == (64, 48)  # 400×300 fitted into 64×64
    assert np.allclose(images.landmarks("big.jpg"), points * [64 / 400, 48 / 300])
    # a PNG cannot be decoded at a reduced scale: the same size is refused, naming the file
    with pytest.raises(DatasetError, match=r"cannot read image /data/big.png: 400×300 pixels is more than"):
        images.load("big.png")


_LOAD_BOMBS = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # decoding any of them would need more
from facebench.datasets import DatasetError, ImageSource
files = {name: bytes.fromhex(line) for name, line in zip(sys.argv[1:], sys.stdin)}
images = ImageSource(files.__getitem__, lambda k: "/data/" + k)
for name in files:
    try:
        images.load(name)
        print("loaded", name)
    except DatasetError as exc:
        print(exc)
"""


def test_decompression_bombs_are_refused_before_decoding():
    # Tiny files announcing 900 and 100 megapixels (2.7 GB and 300 MB decoded), read under a 1 GiB limit.
    bombs = {"bomb30k.png": png_header(30000, 30000), "bomb10k.png": png_header(10000, 10000)}
    done = subprocess.run([sys.executable, "-c", _LOAD_BOMBS, *bombs], input="".join(b.hex() + "\n" for b in
                          bombs.values()), capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 2, done.stderr[-2000:]
    assert lines[0].startswith("cannot read image /data/bomb30k.png: ") and "decompression bomb" in lines[0]
    assert lines[1] == ("cannot read image /data/bomb10k.png: 10000×10000 pixels is more than facebench decodes "
                        "(64 megapixels); downscale it")
