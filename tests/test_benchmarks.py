"""The MLLM throughput benchmark runs, and its 7B configuration is the published model's size."""
import json
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import mllm_throughput  # noqa: E402


def test_published_config_has_qwen2_5_vl_7b_parameter_count():
    # Qwen2.5-VL-7B-Instruct has 8.29 B parameters; built on the meta device, nothing is allocated.
    _, model = mllm_throughput.published_model("qwen2.5-vl-7b", "meta")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert abs(sum(p.numel() for p in model.parameters()) - 8.292e9) < 0.01e9


def test_tiny_benchmark_prints_pairs_per_second_and_ratio():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mllm_throughput.py"), "--config", "tiny",
                          "--pairs", "4", "--naive-pairs", "2", "--batch-size", "4", "--json"],
                         capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["naive_pairs_per_s"] > 0 and result["facebench_pairs_per_s"] > 0
    assert result["ratio"] == round(result["facebench_pairs_per_s"] / result["naive_pairs_per_s"], 2)
