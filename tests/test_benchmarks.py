"""The benchmarks run: MLLM throughput (its 7B configuration is the published model's size) and the study rehearsal."""
import json
import sys
import time

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import mllm_throughput  # noqa: E402


def test_published_config_has_qwen2_5_vl_7b_parameter_count():
    # Qwen2.5-VL-7B-Instruct has 8.29 B parameters; built on the meta device, nothing is allocated.
    _, model = mllm_throughput.published_model("qwen2.5-vl-7b", "meta")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert abs(sum(p.numel() for p in model.parameters()) - 8.292e9) < 0.01e9


def test_tiny_benchmark_prints_pairs_per_second_and_ratio(capsys, monkeypatch):
    # In this process (its imports are paid already); main() sets FACEBENCH_DEVICE, restored after.
    monkeypatch.setenv("FACEBENCH_DEVICE", "cpu")
    start = time.perf_counter()
    assert mllm_throughput.main(["--config", "tiny", "--pairs", "4", "--naive-pairs", "2", "--batch-size", "4",
                                 "--json"]) == 0
    wall = time.perf_counter() - start
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["naive_pairs"], result["facebench_pairs"], result["batch_size"]) == (2, 4, 4)  # as asked
    # Both timed runs happen inside the call: each took some time, together less than the call did.
    naive_s, ours_s = result["naive_seconds"], result["facebench_seconds"]
    assert naive_s > 0 and ours_s > 0 and naive_s + ours_s < wall
    # The rates from the pairs asked for and the times measured (seconds are rounded to the millisecond).
    assert result["naive_pairs_per_s"] == pytest.approx(2 / naive_s, rel=0.05)
    assert result["facebench_pairs_per_s"] == pytest.approx(4 / ours_s, rel=0.05)
    assert result["ratio"] == pytest.approx((4 / ours_s) / (2 / naive_s), rel=0.1)


def test_study_rehearsal_times_every_phase_at_one_percent_scale(capsys, monkeypatch):
    # dlib on two datasets of grids/full.yaml (one with groups, for the RFW summary) at 1% of the pairs:
    # every phase of the full rehearsal, in this process (its imports and warm kernel are paid already).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what the script sets on import, restored after
    monkeypatch.setenv("FACEBENCH_PROGRESS", "0")
    import study_rehearsal

    # The book phase is left out: tests/test_book.py builds a grid's own book, from these summaries too.
    code = study_rehearsal.main(["--models", "1", "--datasets", "lfw,rfw", "--scale", "0.01", "--no-book", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.out[-3000:] + out.err[-3000:]
    stdout = out.out
    result = json.loads(stdout.strip().splitlines()[-1])
    assert list(result["phases"]) == ["fixtures", "import", "score", "render", "summaries", "book"]
    assert all(seconds >= 0 for seconds in result["phases"].values())
    assert result["cells"] == 2 and result["pairs"] == sum(result["pairs_per_dataset"].values())
    assert set(result["pairs_per_dataset"]) == {"lfw", "rfw"}
    assert result["pages"] == {"run_pages": 2, "summaries": 4, "html_pages": 0}
    assert result["peak_rss"]["sampled_sum_mb"] > 0 and set(result["targets"]) == {"render_summaries_book_s",
                                                                                      "peak_rss_mb"}
    assert result["targets"]["render_summaries_book_s"]["pass"] is None  # not measured without the book
    assert "target render_summaries_book_s: not measured (--no-book)" in stdout
    assert result["targets"]["peak_rss_mb"]["pass"] in (True, False) and "target peak_rss_mb: " in stdout
