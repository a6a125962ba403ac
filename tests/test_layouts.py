"""The public sets' on-disk layouts (facebench.layouts): each format, built small in a temp folder with
the published line formats, read into the pairs table (pairs, labels, folds, groups, landmarks); the order
layouts are tried in; errors that name the file, line, pair and position; manifests that match the code;
metadata load time."""
import hashlib
import os
import pickle
import time

import numpy as np
import pytest
import yaml
from PIL import Image

import layout_fixtures as fx
from facebench.datasets import LOADERS, DatasetError, load_dataset
from facebench.integrity import check_dataset
from facebench.layouts import agedb, calfw, cfp, insightface_bin, lfw
from facebench.paths import MANIFESTS_DIR

PUBLIC = ["agedb_30", "calfw", "cfp_ff", "cfp_fp", "cplfw", "lfw", "rfw", "vgg2_fp"]
CODE_LAYOUTS = {
    "lfw": lfw.LFW_LAYOUTS, "rfw": lfw.RFW_LAYOUTS, "calfw": calfw.CALFW_LAYOUTS, "cplfw": calfw.CPLFW_LAYOUTS,
    "cfp_ff": cfp.CFP_FF_LAYOUTS, "cfp_fp": cfp.CFP_FP_LAYOUTS, "agedb_30": agedb.AGEDB_LAYOUTS,
    "vgg2_fp": [insightface_bin.bin_layout("vgg2_fp")],
}


def rows_of(ds):
    return [(int(f), a, b, bool(s), g) for f, a, b, s, g in
            ds.pairs[["fold", "image_a", "image_b", "same", "group"]].itertuples(index=False, name=None)]


def assert_rgb(ds, keys):
    for key in keys:
        image = ds.images.load(key)
        assert isinstance(image, Image.Image) and image.mode == "RGB", key


# ------------------------------------------------------------------ LFW pairs.txt


def test_lfw_pairs_txt(tmp_path):
    expected = fx.make_lfw(tmp_path / "lfw", n_sets=10, per_kind=2)
    lines = (tmp_path / "lfw" / "pairs.txt").read_text().splitlines()
    assert lines[0] == "10\t2" and lines[1] == "Aaron_Peirsol\t1\t2" and lines[3] == "Aaron_Peirsol\t1\tGeorge_W_Bush\t1"
    ds = load_dataset("lfw", tmp_path)
    assert rows_of(ds) == expected
    assert ds.pairs["pair_id"].tolist() == list(range(40))
    assert ds.n_folds == 10 and ds.pairs.groupby("fold")["same"].agg(["sum", "size"]).values.tolist() == [[2, 4]] * 10
    assert ds.pairs.loc[0, "image_a"] == "lfw/Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
    assert ds.info["layout"] == "LFW pairs.txt + lfw/" and ds.info["location"] == str(tmp_path / "lfw")
    assert ds.info["expected_pairs"] == 6000 and ds.info["n_folds_expected"] == 10
    assert ds.info["full_name"].startswith("Labeled Faces in the Wild")
    assert ds.images.describe(ds.pairs.loc[0, "image_a"]) == str(tmp_path / "lfw/lfw/Aaron_Peirsol/Aaron_Peirsol_0001.jpg")
    assert ds.images.landmarks(ds.pairs.loc[0, "image_a"]) is None
    assert_rgb(ds, ds.image_keys()[:3])


def test_lfw_deepfunneled_when_lfw_folder_is_absent(tmp_path):
    expected = fx.make_lfw(tmp_path / "lfw", images="lfw-deepfunneled")
    ds = load_dataset("lfw", tmp_path)
    assert ds.info["layout"] == "LFW pairs.txt + lfw-deepfunneled/"
    assert rows_of(ds) == expected and expected[0][1].startswith("lfw-deepfunneled/")


def test_lfw_bin_is_tried_first(tmp_path):
    fx.make_lfw(tmp_path / "lfw")
    expected, _ = fx.make_bin(tmp_path / "lfw", "lfw", 20)
    ds = load_dataset("lfw", tmp_path)
    assert ds.info["layout"] == "insightface lfw.bin" and rows_of(ds) == expected


def test_lfw_header_that_promises_more_pairs_than_the_file_has(tmp_path):
    fx.make_lfw(tmp_path / "lfw")
    path = tmp_path / "lfw" / "pairs.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DatasetError, match="announces 10 sets of 2 matched") as info:
        load_dataset("lfw", tmp_path)
    assert str(path) in str(info.value) and "39 pair lines" in str(info.value)


def test_lfw_pair_of_the_wrong_kind_names_file_and_line(tmp_path):
    fx.make_lfw(tmp_path / "lfw")
    path = tmp_path / "lfw" / "pairs.txt"
    lines = path.read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]  # a mismatched pair among the matched ones of set 1
    path.write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=rf"{path}:3: set 1 expects a matched pair"):
        load_dataset("lfw", tmp_path)


@pytest.mark.parametrize("line", ["Aaron_Peirsol\tone\t2", "Aaron_Peirsol\t1", "a\t1\tb\t2\tc"])
def test_lfw_malformed_line_names_file_and_line(tmp_path, line):
    fx.make_lfw(tmp_path / "lfw")
    path = tmp_path / "lfw" / "pairs.txt"
    lines = path.read_text().splitlines()
    lines[4] = line
    path.write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=rf"{path}:5: expected 'name n1 n2' or 'name1 n1 name2 n2'"):
        load_dataset("lfw", tmp_path)


def test_lfw_crlf_and_trailing_blank_lines(tmp_path):
    expected = fx.make_lfw(tmp_path / "lfw")
    path = tmp_path / "lfw" / "pairs.txt"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n") + b"\r\n\r\n")
    assert rows_of(load_dataset("lfw", tmp_path)) == expected


# ------------------------------------------------------------------ insightface .bin


@pytest.mark.parametrize("style", ["py2", "numpy", "numpy2"])
def test_bin_pairs_folds_and_blobs(tmp_path, style):
    expected, blobs = fx.make_bin(tmp_path / "cfp_fp", "cfp_fp", 40, style=style)
    ds = load_dataset("cfp_fp", tmp_path)
    assert rows_of(ds) == expected
    assert ds.pairs.groupby("fold").size().tolist() == [4] * 10  # 10 contiguous blocks in file order
    assert ds.pairs["fold"].is_monotonic_increasing
    assert ds.info["layout"] == "insightface cfp_fp.bin" and ds.info["expected_pairs"] == 7000
    assert ds.images.read_bytes("#5") == blobs[5]
    assert ds.images.describe("#5") == f"{tmp_path / 'cfp_fp' / 'cfp_fp.bin'} image #5 (pair 2, second image)"
    assert ds.source_checksum == hashlib.sha256((tmp_path / "cfp_fp" / "cfp_fp.bin").read_bytes()).hexdigest()
    assert_rgb(ds, ["#0", "#79"])


@pytest.mark.parametrize("name", ["lfw", "cfp_ff", "cfp_fp", "agedb_30", "calfw", "cplfw", "vgg2_fp"])
def test_every_bin_name_loads(tmp_path, name):
    expected, _ = fx.make_bin(tmp_path / name, name, 10)
    ds = load_dataset(name, tmp_path)
    assert ds.name == name and rows_of(ds) == expected and ds.info["layout"] == f"insightface {name}.bin"


def test_truncated_blob_names_pair_and_position(tmp_path):
    _, blobs = fx.make_bin(tmp_path / "lfw", "lfw", 10)
    blobs[7] = blobs[7][: len(blobs[7]) // 2]
    (tmp_path / "lfw" / "lfw.bin").write_bytes(fx.py2_bin(blobs, [True, False] * 5))
    ds = load_dataset("lfw", tmp_path)
    with pytest.raises(DatasetError, match=r"lfw\.bin image #7 \(pair 3, second image\)"):
        ds.images.load("#7")
    report = check_dataset("lfw", tmp_path)
    errors = [e for e in report["errors"] if "cannot read image" in e]
    assert len(errors) == 1 and "image #7 (pair 3, second image)" in errors[0] and "used by pairs [3]" in errors[0]


def test_bin_with_an_image_count_that_does_not_match(tmp_path):
    (tmp_path / "lfw").mkdir()
    (tmp_path / "lfw" / "lfw.bin").write_bytes(fx.py2_bin([fx.jpeg_bytes(1)] * 5, [True, False]))
    with pytest.raises(DatasetError, match=r"lfw\.bin: 5 images for 2 pairs"):
        load_dataset("lfw", tmp_path)


@pytest.mark.parametrize("content, message", [
    (([b"a", b"b", "text", b"d"], [True, False]), r"image #2 \(pair 1, first image\) is a str"),
    (([b"a", b"b"], ["yes"]), r"pair 0 has label 'yes'"),
    (([np.zeros((4, 4, 3), np.uint8), b"b"], [True]), r"image #0 \(pair 0, first image\) is a \(4, 4, 3\) array of pixels"),
    ([b"a", b"b"], r"expected \(list of images, list of booleans\)"),
    ({"images": []}, r"expected a pickle of \(images, issame\)"),
])
def test_bin_of_the_wrong_shape(tmp_path, content, message):
    (tmp_path / "lfw").mkdir()
    (tmp_path / "lfw" / "lfw.bin").write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(DatasetError, match=message):
        load_dataset("lfw", tmp_path)


def test_truncated_bin_file(tmp_path):
    fx.make_bin(tmp_path / "lfw", "lfw", 10)
    fx.truncate(tmp_path / "lfw" / "lfw.bin")
    with pytest.raises(DatasetError, match=r"lfw\.bin: not a readable insightface \.bin pickle"):
        load_dataset("lfw", tmp_path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_bin_carrying_a_callable_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "lfw").mkdir()
    path = tmp_path / "lfw" / "lfw.bin"
    path.write_bytes(pickle.dumps(([fx.jpeg_bytes(1), _Payload(marker)], [True]), protocol=2))
    with pytest.raises(DatasetError, match="refusing to load global .*system") as info:
        load_dataset("lfw", tmp_path)
    assert str(path) in str(info.value) and "nothing in the file was run" in str(info.value)
    assert not marker.exists()
    report = check_dataset("lfw", tmp_path)
    assert len(report["errors"]) == 1 and "refusing" in report["errors"][0]
    assert not marker.exists()


@pytest.mark.parametrize("data, problem", [
    (b"\x80\x02N" + b"\x85" * 10_000 + b".", "nested more than 64 levels"),
    (b"\x80\x02c__builtin__\nbytearray\n\x8a\x05\x00\x00\x00\xc0\x00\x85R.", "bytearray of 3221225472"),
])
def test_a_hostile_bin_is_an_error_naming_the_file(tmp_path, data, problem):
    (tmp_path / "lfw").mkdir()
    (tmp_path / "lfw" / "lfw.bin").write_bytes(data)
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'lfw' / 'lfw.bin'}: .*{problem}"):
        load_dataset("lfw", tmp_path)


# ------------------------------------------------------------------ RFW


def test_rfw_groups_folds_and_landmarks(tmp_path):
    expected = fx.make_rfw(tmp_path / "rfw", per_race=20)
    assert (tmp_path / "rfw/txts/Asian/Asian_pairs.txt").read_text().splitlines()[:2] == \
        ["m.0as0x\t1\t2", "m.0as1x\t1\tm.0as2x\t2"]
    ds = load_dataset("rfw", tmp_path)
    assert rows_of(ds) == expected
    assert ds.info["layout"] == "RFW txts/ + data/" and ds.info["expected_pairs_per_group"]["Indian"] == 6000
    p = ds.pairs
    assert p["group"].tolist() == [r for r in fx.RACES for _ in range(20)]
    for race, part in p.groupby("group"):
        assert sorted(part["fold"].unique()) == list(range(10)), race
        assert part.groupby("fold")["same"].sum().tolist() == [1] * 10, race
    key = "data/Caucasian/m.0ca1x/m.0ca1x_0002.jpg"
    assert key in set(ds.image_keys())
    points = ds.images.landmarks(key)
    assert points.shape == (5, 2)
    np.testing.assert_allclose(points, fx.rfw_landmarks("m.0ca1x", 2), atol=0.006)
    assert ds.images.landmarks("data/Caucasian/nobody/nobody_0001.jpg") is None
    assert_rgb(ds, [key])


def test_rfw_without_landmark_files(tmp_path):
    fx.make_rfw(tmp_path / "rfw", landmarks=False)
    ds = load_dataset("rfw", tmp_path)
    assert all(ds.images.landmarks(k) is None for k in ds.image_keys())


def test_rfw_as_unpacked_under_test(tmp_path):
    expected = fx.make_rfw(tmp_path / "rfw" / "test")
    ds = load_dataset("rfw", tmp_path)
    assert ds.info["layout"] == "RFW test/txts/ + test/data/ (as unpacked)"
    assert ds.info["location"] == str(tmp_path / "rfw" / "test") and rows_of(ds) == expected


def test_rfw_broken_landmark_line_is_a_check_error(tmp_path):
    fx.make_rfw(tmp_path / "rfw")
    lmk = tmp_path / "rfw/txts/Asian/Asian_lmk.txt"
    lines = lmk.read_text().splitlines()
    lines[1] = lines[1].rsplit("\t", 1)[0]  # 11 fields
    lmk.write_text("\n".join(lines))
    report = check_dataset("rfw", tmp_path)
    assert [e for e in report["errors"] if e.startswith("landmarks:")] == [
        e for e in report["errors"] if f"{lmk}:2" in e]
    assert len(report["errors"]) == 1


def test_rfw_missing_race_lists_the_files_looked_for(tmp_path):
    fx.make_rfw(tmp_path / "rfw")
    (tmp_path / "rfw/txts/Indian/Indian_pairs.txt").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("rfw", tmp_path)
    msg = str(info.value)
    assert "txts/Indian/Indian_pairs.txt (missing)" in msg and "txts/African/African_pairs.txt +" in msg
    assert "test/data (missing)" in msg


# ------------------------------------------------------------------ CALFW / CPLFW


@pytest.mark.parametrize("name, pairs_file", [("calfw", "pairs_CALFW.txt"), ("cplfw", "pairs_CPLFW.txt")])
def test_two_line_pair_lists(tmp_path, name, pairs_file):
    expected = fx.make_calfw(tmp_path / name, pairs_file, n_pos=20, n_neg=20)
    lines = (tmp_path / name / pairs_file).read_text().splitlines()
    assert lines[:2] == ["Abel_Pacheco_0001.jpg 1", "Abel_Pacheco_0002.jpg 1"] and lines[-1].endswith(" 0")
    ds = load_dataset(name, tmp_path)
    assert rows_of(ds) == expected and ds.info["layout"] == f"{name.upper()} {pairs_file} + aligned images/"
    # fold k = matched[2k:2k+2] + mismatched[2k:2k+2] (300 each in the published 6,000-pair lists)
    p = ds.pairs
    for k in range(10):
        ids = p.loc[p["fold"] == k, "pair_id"].tolist()
        assert ids == [2 * k, 2 * k + 1, 20 + 2 * k, 20 + 2 * k + 1]
    assert ds.pairs.loc[0, "image_a"] == "aligned images/Abel_Pacheco_0001.jpg"
    assert_rgb(ds, [ds.pairs.loc[0, "image_a"]])


def test_calfw_numbered_positive_labels_and_images_folder(tmp_path):
    expected = fx.make_calfw(tmp_path / "calfw", numbered=True, images="images")
    ds = load_dataset("calfw", tmp_path)
    assert rows_of(ds) == expected and ds.info["layout"] == "CALFW pairs_CALFW.txt + images/"


def test_calfw_fold_rule_at_published_size(tmp_path):
    (tmp_path / "calfw" / "aligned images").mkdir(parents=True)
    lines = [f"A_{i:04d}.jpg 1\nA_{i + 1:04d}.jpg 1" for i in range(3000)]
    lines += [f"A_{i:04d}.jpg 0\nB_{i:04d}.jpg 0" for i in range(3000)]
    (tmp_path / "calfw" / "pairs_CALFW.txt").write_text("\n".join(lines) + "\n")
    p = load_dataset("calfw", tmp_path).pairs
    for k in (0, 4, 9):
        assert p.loc[p["fold"] == k, "pair_id"].tolist() == [*range(300 * k, 300 * k + 300),
                                                               *range(3000 + 300 * k, 3000 + 300 * k + 300)]


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:-1], r": 39 lines; pairs take two lines each"),
    (lambda lines: [lines[0], lines[1].replace(" 1", " 0"), *lines[2:]], r":1-2: the two lines of pair 0 disagree"),
    (lambda lines: [lines[0], "Abel_Pacheco_0002.jpg", *lines[2:]], r":2: expected 'filename label'"),
    (lambda lines: [lines[0], "Abel_Pacheco_0002.jpg -1", *lines[2:]], r":2: expected 'filename label'"),
])
def test_calfw_malformed_list_names_file_and_lines(tmp_path, edit, message):
    fx.make_calfw(tmp_path / "calfw", n_pos=10, n_neg=10)
    path = tmp_path / "calfw" / "pairs_CALFW.txt"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(DatasetError, match=str(path).replace(".", r"\.") + message):
        load_dataset("calfw", tmp_path)


# ------------------------------------------------------------------ CFP


@pytest.mark.parametrize("name, protocol", [("cfp_ff", "FF"), ("cfp_fp", "FP")])
def test_cfp_protocol_files(tmp_path, name, protocol):
    expected = fx.make_cfp(tmp_path / name, protocol)
    assert (tmp_path / name / "Protocol/Pair_list_F.txt").read_text().splitlines()[0] == \
        "1 ../Data/Images/001/frontal/01.jpg"
    assert (tmp_path / name / f"Protocol/Split/{protocol}/01/same.txt").read_text().splitlines()[0] == "1,2"
    ds = load_dataset(name, tmp_path)
    assert rows_of(ds) == expected and ds.info["layout"] == f"CFP Protocol/ + Data/Images/ ({protocol})"
    first = ds.pairs.loc[0]
    assert (first["image_a"], first["image_b"]) == (
        "Data/Images/001/frontal/01.jpg", f"Data/Images/001/{'frontal' if protocol == 'FF' else 'profile'}/02.jpg")
    assert ds.pairs.groupby("fold")["same"].agg(["sum", "size"]).values.tolist() == [[2, 4]] * 10
    assert_rgb(ds, [first["image_a"], first["image_b"]])


def test_cfp_as_unpacked_in_cfp_dataset(tmp_path):
    expected = fx.make_cfp(tmp_path / "cfp_fp" / "cfp-dataset", "FP")
    ds = load_dataset("cfp_fp", tmp_path)
    assert rows_of(ds) == expected and ds.info["location"] == str(tmp_path / "cfp_fp" / "cfp-dataset")


def test_cfp_index_missing_from_the_pair_list(tmp_path):
    fx.make_cfp(tmp_path / "cfp_fp", "FP")
    split = tmp_path / "cfp_fp/Protocol/Split/FP/03/diff.txt"
    split.write_text("1,2\n1,99\n")
    with pytest.raises(DatasetError, match=rf"{split}:2: index 99 is not in Protocol/Pair_list_P.txt"):
        load_dataset("cfp_fp", tmp_path)


def test_cfp_fold_without_diff_file(tmp_path):
    fx.make_cfp(tmp_path / "cfp_ff", "FF")
    (tmp_path / "cfp_ff/Protocol/Split/FF/07/diff.txt").unlink()
    with pytest.raises(DatasetError, match=r"Split/FF/07/diff\.txt is missing"):
        load_dataset("cfp_ff", tmp_path)


# ------------------------------------------------------------------ AgeDB


def test_agedb_mat_protocol_and_landmarks(tmp_path):
    expected = fx.make_agedb(tmp_path / "agedb_30")
    ds = load_dataset("agedb_30", tmp_path)
    assert rows_of(ds) == expected
    assert ds.info["layout"] == "AgeDB 04_FINAL_protocol_30_years.mat + 03_Protocol_Images/"
    assert ds.pairs.groupby("fold")["same"].agg(["sum", "size"]).values.tolist() == [[2, 4]] * 10
    key = ds.pairs.loc[0, "image_a"]
    pts = fx.agedb_points(key)
    want = np.array([pts[[36, 39]].mean(0), pts[[42, 45]].mean(0), pts[33], pts[48], pts[54]])
    np.testing.assert_allclose(ds.images.landmarks(key), want)
    assert_rgb(ds, [key])


def test_agedb_without_pts_files(tmp_path):
    fx.make_agedb(tmp_path / "agedb_30", pts=False)
    ds = load_dataset("agedb_30", tmp_path)
    assert ds.images.landmarks(ds.pairs.loc[0, "image_a"]) is None


def test_agedb_mat_that_is_not_a_mat(tmp_path):
    fx.make_agedb(tmp_path / "agedb_30")
    path = tmp_path / "agedb_30" / "04_FINAL_protocol_30_years.mat"
    path.write_text("not matlab")
    with pytest.raises(DatasetError, match=f"{path}: not an AgeDB protocol"):
        load_dataset("agedb_30", tmp_path)


# ------------------------------------------------------------------ no layout


def test_folder_without_any_layout_lists_what_was_looked_for(tmp_path):
    (tmp_path / "lfw").mkdir()
    (tmp_path / "lfw" / "pairs.txt").write_text("10\t300\n")
    with pytest.raises(DatasetError) as info:
        load_dataset("lfw", tmp_path)
    assert str(info.value).splitlines()[1:4] == [
        "  insightface lfw.bin: lfw.bin (missing)",
        "  LFW pairs.txt + lfw/: pairs.txt + lfw (missing)",
        "  LFW pairs.txt + lfw-deepfunneled/: pairs.txt + lfw-deepfunneled (missing)",
    ]
    assert f"nothing usable in {tmp_path / 'lfw'}" in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'cplfw'} does not exist") as info:
        load_dataset("cplfw", tmp_path)
    assert "cplfw.bin" in str(info.value) and "pairs_CPLFW.txt + aligned images" in str(info.value)


# ------------------------------------------------------------------ manifests


def test_every_public_set_is_registered_lazily():
    assert set(PUBLIC) <= set(LOADERS.names())
    assert set(CODE_LAYOUTS) == set(PUBLIC)


@pytest.mark.parametrize("name", PUBLIC)
def test_manifest_documents_the_layouts_the_code_reads(name):
    doc = yaml.safe_load((MANIFESTS_DIR / f"{name}.yaml").read_text())
    assert doc["name"] == name and doc["n_folds"] == 10
    cite = doc["citation"]
    assert cite["authors"] and cite["title"] and cite["venue"] and 2007 <= cite["year"] <= 2019
    assert doc["homepage"].startswith("http") and doc["obtain"] and doc["terms_of_use"]
    documented = [(entry["name"], tuple(entry["needs"]), entry.get("base", "")) for entry in doc["layouts"]]
    assert documented == [(layout.name, layout.needs, layout.base) for layout in CODE_LAYOUTS[name]]
    assert isinstance(doc["checksums"], dict)
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in doc["checksums"].values())


def test_manifest_pair_counts_are_the_protocols():
    counts = {n: yaml.safe_load((MANIFESTS_DIR / f"{n}.yaml").read_text())["expected_pairs"] for n in PUBLIC}
    assert counts == {"lfw": 6000, "calfw": 6000, "cplfw": 6000, "cfp_ff": 7000, "cfp_fp": 7000,
                      "agedb_30": 6000, "rfw": 24000, "vgg2_fp": 5000}


# ------------------------------------------------------------------ speed


def test_6000_pair_metadata_loads_in_under_a_second(tmp_path):
    fx.make_lfw(tmp_path / "lfw", n_sets=10, per_kind=300, write_images=False)
    (tmp_path / "lfw" / "lfw").mkdir()  # the image folder, empty: loading needs no image
    fx.make_bin(tmp_path / "agedb_30", "agedb_30", 6000, n_distinct=50)
    for name in ("lfw", "agedb_30"):
        start = time.perf_counter()
        ds = LOADERS.get(name)(tmp_path)
        seconds = time.perf_counter() - start
        assert len(ds.pairs) == 6000 and ds.n_folds == 10
        assert seconds < 1.0, f"{name}: {seconds:.2f} s"
        assert not ds.images._cache  # nothing decoded


def test_check_decodes_each_unique_image_once(tmp_path, monkeypatch):
    fx.make_lfw(tmp_path / "lfw")
    ds = load_dataset("lfw", tmp_path)
    reads = []
    read = ds.images._read
    ds.images._read = lambda key: reads.append(key) or read(key)  # test hook: count reads
    monkeypatch.setitem(LOADERS._entries, "lfw", lambda root: ds)
    report = check_dataset("lfw", tmp_path)
    assert sorted(reads) == sorted(set(ds.image_keys())) and len(reads) == len(set(reads))
    assert report["facts"]["images"] == len(reads) < 2 * len(ds.pairs)


# ------------------------------------------------------------------ hostile pair lists and image files


def test_paths_leading_out_of_the_image_folder_are_refused_with_their_pairs(tmp_path):
    from facebench.integrity import preflight

    fx.make_calfw(tmp_path / "calfw", n_pos=10, n_neg=10)
    fx.write_image(tmp_path / "secret.jpg", seed=1)  # a real image outside the dataset
    fx.write_image(tmp_path / "calfw" / "secret.jpg", seed=2)  # next to the image folder, still outside it
    path = tmp_path / "calfw" / "pairs_CALFW.txt"
    lines = path.read_text().splitlines()
    lines[0] = "../../secret.jpg 1"  # pair 0, first image
    lines[3] = "../secret.jpg 1"  # pair 1, second image
    path.write_text("\n".join(lines) + "\n")
    inside = tmp_path / "calfw" / "aligned images" / lines[4].split()[0]
    inside.unlink()
    inside.symlink_to(tmp_path / "secret.jpg")  # pair 2: a symlink out of the image folder
    ds = load_dataset("calfw", tmp_path)
    linked = inside.relative_to(tmp_path / "calfw").as_posix()
    for key in ("aligned images/../../secret.jpg", "aligned images/../secret.jpg", linked):
        with pytest.raises(DatasetError, match=r"outside the dataset's image folder .*aligned images; refused"):
            ds.images.load(key)
    errors = [e for e in check_dataset("calfw", tmp_path)["errors"] if "outside the dataset's image folder" in e]
    assert [e.split("; used by pairs ")[1] for e in errors] == ["[0]", "[1]", str(ds.pairs_using(linked))]
    assert str(tmp_path / "calfw" / "aligned images/../../secret.jpg") in errors[0]
    with pytest.raises(DatasetError, match=r"failed its image files check: .*secret\.jpg: resolves to "
                                           rf"{tmp_path}/secret\.jpg, outside .*; used by pairs \[0\]"):
        preflight("calfw", tmp_path)


def test_fifo_and_device_images_are_errors_not_hangs(tmp_path):
    import signal

    fx.make_lfw(tmp_path / "lfw")
    ds = load_dataset("lfw", tmp_path)
    fifo, device = ds.pairs.loc[0, "image_a"], ds.pairs.loc[5, "image_b"]
    (tmp_path / "lfw" / fifo).unlink()
    os.mkfifo(tmp_path / "lfw" / fifo)  # no writer: reading it would block for ever
    (tmp_path / "lfw" / device).unlink()
    os.mkdir(tmp_path / "lfw" / device)
    signal.alarm(20)  # a hang fails the test instead of the whole run
    try:
        report = check_dataset("lfw", tmp_path)
    finally:
        signal.alarm(0)
    errors = [e for e in report["errors"] if "not a regular file" in e]
    assert len(errors) == 2
    assert str(tmp_path / "lfw" / fifo) in errors[0] and "(a FIFO)" in errors[0] and "used by pairs [0" in errors[0]
    assert str(tmp_path / "lfw" / device) in errors[1] and "(a folder)" in errors[1]


def test_a_pair_list_with_no_pairs_is_refused(tmp_path):
    (tmp_path / "calfw" / "aligned images").mkdir(parents=True)
    (tmp_path / "calfw" / "pairs_CALFW.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"calfw: the CALFW pairs_CALFW.txt \+ aligned images/ files in .* hold no "
                                           "pairs"):
        load_dataset("calfw", tmp_path)


def test_an_image_folder_that_is_a_symlink_is_read(tmp_path):
    # e.g. the images on another disk: the folder the layout names is the boundary, wherever it lives
    fx.make_lfw(tmp_path / "elsewhere")
    (tmp_path / "root" / "lfw").mkdir(parents=True)
    (tmp_path / "root" / "lfw" / "pairs.txt").write_bytes((tmp_path / "elsewhere" / "pairs.txt").read_bytes())
    (tmp_path / "root" / "lfw" / "lfw").symlink_to(tmp_path / "elsewhere" / "lfw")
    ds = load_dataset("lfw", tmp_path / "root")
    assert_rgb(ds, ds.image_keys()[:2])
    assert not check_dataset("lfw", tmp_path / "root")["errors"]
