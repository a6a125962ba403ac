"""Dataset integrity on small copies of the public sets: `data check` (facts, protocol warnings, broken
images named with their pairs), `--pin` and the lock file, and the pre-flight of `evaluate`."""
import hashlib
import json

import pytest

import layout_fixtures as fx
from facebench.cli import main
from facebench.datasets import DatasetError
from facebench.integrity import LOCK_FILE, check_dataset, preflight


def lfw_root(tmp_path):
    """A small LFW copy (pairs.txt + lfw/) under ``tmp_path/root``; its pairs rows."""
    root = tmp_path / "root"
    return root, fx.make_lfw(root / "lfw", n_sets=10, per_kind=2)


def used_by(rows, key):
    return [i for i, r in enumerate(rows) if key in r[1:3]]


def test_check_a_clean_lfw_copy(tmp_path):
    root, rows = lfw_root(tmp_path)
    report = check_dataset("lfw", root)
    assert report["errors"] == []
    facts = report["facts"]
    assert facts["layout"] == "LFW pairs.txt + lfw/" and facts["pairs"] == 40 and facts["folds"] == 10
    assert facts["per_fold"] == {f: "2 genuine / 2 impostor" for f in range(10)}
    assert facts["images"] == len({k for r in rows for k in r[1:3]})
    # Departures from the protocol are warnings: the pair count, and a pairs.txt that is not the published one.
    assert report["warnings"][0] == "40 pairs, the protocol has 6000"
    assert len(report["warnings"]) == 2 and "differs from the published ea42330c" in report["warnings"][1]


def test_check_names_missing_and_truncated_jpegs_with_their_pairs(tmp_path):
    root, rows = lfw_root(tmp_path)
    missing, broken = rows[0][1], rows[5][2]
    (root / "lfw" / missing).unlink()
    fx.truncate(root / "lfw" / broken)
    errors = check_dataset("lfw", root)["errors"]
    assert len(errors) == 2
    for key, why in ((missing, "No such file"), (broken, "truncated")):
        [error] = [e for e in errors if str(root / "lfw" / key) in e]
        assert error.startswith("cannot read image") and why in error
        assert error.endswith(f"used by pairs {used_by(rows, key)}")


def test_check_rfw_reports_groups(tmp_path):
    fx.make_rfw(tmp_path / "rfw", per_race=20)
    report = check_dataset("rfw", tmp_path)
    assert report["errors"] == []
    assert report["facts"]["groups"] == {r: "20 pairs, 10 folds, 10 genuine / 10 impostor" for r in fx.RACES}
    assert report["warnings"] == ["80 pairs, the protocol has 24000"] + [
        f"group {r}: 20 pairs, the protocol has 6000" for r in fx.RACES]


def test_check_warns_of_a_one_class_fold_per_group(tmp_path):
    fx.make_rfw(tmp_path / "rfw", per_race=20)
    path = tmp_path / "rfw/txts/Asian/Asian_pairs.txt"
    lines = path.read_text().splitlines()
    lines[1] = lines[0]  # fold 0 of Asian: two matched pairs, no mismatched one
    path.write_text("\n".join(lines) + "\n")
    assert "group Asian fold 0 holds one class only" in check_dataset("rfw", tmp_path)["warnings"]


def test_data_check_cli_pair_count_warning_and_strict(tmp_path, capsys):
    root, _ = lfw_root(tmp_path)
    assert main(["data", "check", "lfw", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "warning: 40 pairs, the protocol has 6000" in out and "lfw: ok (0 errors, 2 warnings)" in out
    assert main(["data", "check", "lfw", "--root", str(root), "--strict"]) == 1
    assert "lfw: FAILED (0 errors, 2 warnings)" in capsys.readouterr().out


def test_data_check_cli_missing_image_fails(tmp_path, capsys):
    root, rows = lfw_root(tmp_path)
    (root / "lfw" / rows[3][1]).unlink()
    assert main(["data", "check", "lfw", "--root", str(root), "--json"]) == 1
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert len(report["errors"]) == 1 and str(root / "lfw" / rows[3][1]) in report["errors"][0]
    assert "lfw: FAILED (1 errors" in out


def test_pin_then_a_changed_or_missing_file_is_reported(tmp_path, capsys):
    root, rows = lfw_root(tmp_path)
    assert main(["data", "check", "--pin", "lfw", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    lock = root / LOCK_FILE
    n_files = 1 + len({k for r in rows for k in r[1:3]})
    assert f"pinned     {n_files} files recorded in {lock}" in out
    pinned = json.loads(lock.read_text())["datasets"]["lfw"]
    assert pinned["layout"] == "LFW pairs.txt + lfw/" and len(pinned["files"]) == n_files
    assert pinned["files"]["pairs.txt"] == hashlib.sha256((root / "lfw/pairs.txt").read_bytes()).hexdigest()
    assert check_dataset("lfw", root)["errors"] == []

    changed, gone = rows[2][1], rows[7][2]
    (root / "lfw" / changed).write_bytes(fx.jpeg_bytes(999))  # still a valid JPEG: only the pin notices
    (root / "lfw" / gone).unlink()
    errors = check_dataset("lfw", root)["errors"]
    assert [e for e in errors if "changed since it was pinned" in e] == [
        e for e in errors if str(root / "lfw" / changed) in e]
    assert len([e for e in errors if "changed since it was pinned" in e]) == 1
    assert any(str(root / "lfw" / gone) in e and "missing; it was pinned" in e
               and f"used by pairs {used_by(rows, gone)}" in e for e in errors)
    with pytest.raises(DatasetError, match="failed its image files check"):
        preflight("lfw", root)
    fx.write_image(root / "lfw" / gone, seed=fx.seed_of(gone))  # back as it was
    with pytest.raises(DatasetError) as info:
        preflight("lfw", root)
    assert "failed its pinned checksums check" in str(info.value) and str(root / "lfw" / changed) in str(info.value)
    assert "Run `facebench data check lfw` for the full report." in str(info.value)


def test_pin_of_a_bin_records_the_bin_and_notices_a_new_one(tmp_path):
    fx.make_bin(tmp_path / "calfw", "calfw", 20)
    report = check_dataset("calfw", tmp_path, pin=True)
    assert report["errors"] == [] and report["facts"]["pinned"].startswith("1 files recorded")
    assert preflight("calfw", tmp_path).name == "calfw"
    fx.make_bin(tmp_path / "calfw", "calfw", 20, style="numpy")  # same pairs, another file
    with pytest.raises(DatasetError, match=r"calfw\.bin: changed since it was pinned"):
        preflight("calfw", tmp_path)
    # Pinning again accepts the new file.
    assert check_dataset("calfw", tmp_path, pin=True)["errors"] == []
    assert preflight("calfw", tmp_path).info["layout"] == "insightface calfw.bin"


def test_pin_refuses_a_dataset_with_errors(tmp_path):
    root, rows = lfw_root(tmp_path)
    fx.truncate(root / "lfw" / rows[0][1])
    report = check_dataset("lfw", root, pin=True)
    assert report["errors"][-1] == "not pinned: lfw has errors; fix them and pin again"
    assert "pinned" not in report["facts"] and not (root / LOCK_FILE).exists()


def test_pin_with_another_layout_is_reported(tmp_path):
    root, _ = lfw_root(tmp_path)
    check_dataset("lfw", root, pin=True)
    fx.make_bin(root / "lfw", "lfw", 20)  # now the .bin is read first
    errors = check_dataset("lfw", root)["errors"]
    assert errors == [f"lfw was pinned as 'LFW pairs.txt + lfw/' in {root / 'lfw'}, but is now read as "
                      f"'insightface lfw.bin' in {root / 'lfw'} (lock file {root / LOCK_FILE})"]


def test_preflight_names_the_failed_check(tmp_path):
    with pytest.raises(DatasetError) as info:
        preflight("cfp_fp", tmp_path)
    msg = str(info.value)
    assert msg.startswith("dataset 'cfp_fp' failed its layout and pair list check: cfp_fp: ")
    assert "cfp_fp.bin" in msg and msg.endswith("Run `facebench data check cfp_fp` for the full report.")
    root, rows = lfw_root(tmp_path)
    (root / "lfw" / rows[1][2]).unlink()
    with pytest.raises(DatasetError) as info:
        preflight("lfw", root)
    assert "failed its image files check: 1 of" in str(info.value)
    assert f"{root / 'lfw' / rows[1][2]} (pairs {used_by(rows, rows[1][2])[:5]})" in str(info.value)


def test_evaluate_refuses_a_dataset_that_fails_its_check(tmp_path, capsys):
    root, rows = lfw_root(tmp_path)
    (root / "lfw" / rows[0][1]).unlink()
    out = tmp_path / "results"
    rc = main(["evaluate", "--model", "dlib", "--dataset", "lfw", "--root", str(root), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "failed its image files check" in err and "facebench data check lfw" in err
    assert not out.exists()
