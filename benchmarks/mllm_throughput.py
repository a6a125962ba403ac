"""MLLM pair-verification throughput: the naive way against facebench's batched scoring.

    python benchmarks/mllm_throughput.py --config tiny --device cpu --json
    python benchmarks/mllm_throughput.py --config qwen2.5-vl-7b --device cuda --json

Both sides score the same demo pairs with the same model and prompt:

* naive — what a first script does: one pair at a time, the chat template
  applied with both images, ``generate(max_new_tokens=32)``, the text parsed;
* facebench — :class:`facebench.backends.hf_vlm.HFVisionLanguage`: batches of
  ``--batch-size`` pairs with left padding, one ``generate`` of
  ``max_new_tokens`` (8) that yields both the yes/no log-odds and the answer.

``tiny`` is a 2-layer random-weight Qwen2.5-VL saved to a folder and loaded the
way users load models; ``qwen2.5-vl-7b`` has Qwen2.5-VL-7B-Instruct's published
sizes (``benchmarks/configs``) with random weights, built on the device (values
don't change speed). The clock starts after loading and one warm-up call each.
The last stdout line (with ``--json``) is strict JSON with pairs/s for both and
``ratio`` = facebench / naive.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

CONFIGS = Path(__file__).with_name("configs")
NAIVE_MAX_NEW_TOKENS = 32


def demo_pairs(n: int):
    from facebench.datasets import load_dataset

    ds = load_dataset("demo")
    keys = ds.pairs[["image_a", "image_b"]].to_numpy()
    return [(ds.images.load(a), ds.images.load(b)) for a, b in (keys[i % len(keys)] for i in range(n))]


def published_model(name: str, device: str):
    """(processor, model) with a published config's sizes and random weights, built on ``device``."""
    import torch
    import transformers

    from facebench import tiny_models

    spec = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    family = tiny_models.get_family(spec["family"])
    tokenizer = tiny_models.train_tokenizer(family)
    processor = tiny_models.make_processor(family, tokenizer)
    processor.image_processor = type(processor.image_processor)(**spec["image_processor"])
    config = tiny_models.make_config(family, tokenizer)
    # Rebuilt rather than updated: derived fields (layer_types) follow the layer count.
    for key in ("text_config", "vision_config"):
        sub = getattr(config, key)
        fields = {k: v for k, v in sub.to_dict().items() if k != "layer_types"}
        setattr(config, key, type(sub)(**{**fields, **spec[key]}))
    dtype = getattr(torch, spec["dtype"])
    with torch.device(device):
        model = transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype)
    tiny_models._set_generation_tokens(model, family, tokenizer)
    return processor, model.eval()


def make_verifier(config: str, device: str, tmp: Path):
    from facebench.backends.hf_vlm import HFVisionLanguage
    from facebench.tiny_models import build

    if config == "tiny":
        return HFVisionLanguage(model=str(build("qwen2.5-vl", tmp / "tiny")), dtype="float32")
    verifier = HFVisionLanguage(model=config, dtype="bfloat16")
    processor, model = published_model(config, device)
    processor.tokenizer.padding_side = "left"
    verifier.__dict__["_loaded"] = (processor, model)  # in memory: a 7B model need not be saved first
    return verifier


def naive(verifier, pairs) -> list[int]:
    """One pair at a time, generate 32 tokens, parse: the baseline."""
    import torch

    processor, model = verifier._loaded
    decisions = []
    for a, b in pairs:
        messages = [{"role": "user", "content": [{"type": "image", "image": a}, {"type": "image", "image": b},
                                                  {"type": "text", "text": verifier.prompt.question}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        inputs = inputs.to(verifier.device, dtype=verifier.torch_dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=NAIVE_MAX_NEW_TOKENS, do_sample=False)
        text = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        decisions.append(verifier.prompt.parse(text).decision)
    return decisions


def batched(verifier, pairs, batch_size: int) -> list[dict]:
    rows = []
    for i in range(0, len(pairs), batch_size):
        rows += verifier.score_pairs(pairs[i:i + batch_size])
    return rows


def timed(fn, *args) -> float:
    import torch

    t0 = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=["tiny", *sorted(f.stem for f in CONFIGS.glob("*.yaml"))], default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--pairs", type=int, default=64, help="pairs for facebench's batched scoring (default 64)")
    p.add_argument("--naive-pairs", type=int, default=16, help="pairs for the naive loop (default 16)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true", help="end with the result as one JSON line")
    args = p.parse_args(argv)

    import os

    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    os.environ["FACEBENCH_DEVICE"] = args.device
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        verifier = make_verifier(args.config, args.device, Path(tmp))
        verifier._loaded[1].to(verifier.device)
        pairs = demo_pairs(max(args.pairs, args.naive_pairs))
        naive(verifier, pairs[:1])  # warm-up both paths
        batched(verifier, pairs[:args.batch_size], args.batch_size)
        naive_s = timed(naive, verifier, pairs[:args.naive_pairs])
        ours_s = timed(batched, verifier, pairs[:args.pairs], args.batch_size)
    result = {
        "config": args.config, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
        "batch_size": args.batch_size, "naive_max_new_tokens": NAIVE_MAX_NEW_TOKENS,
        "facebench_max_new_tokens": verifier.max_new_tokens,
        "naive_pairs": args.naive_pairs, "naive_seconds": round(naive_s, 3),
        "naive_pairs_per_s": round(args.naive_pairs / naive_s, 3),
        "facebench_pairs": args.pairs, "facebench_seconds": round(ours_s, 3),
        "facebench_pairs_per_s": round(args.pairs / ours_s, 3),
    }
    result["ratio"] = round(result["facebench_pairs_per_s"] / result["naive_pairs_per_s"], 2)
    print(f"naive     {result['naive_pairs_per_s']:9.2f} pairs/s  ({args.naive_pairs} pairs, one at a time, "
          f"{NAIVE_MAX_NEW_TOKENS} new tokens)")
    print(f"facebench {result['facebench_pairs_per_s']:9.2f} pairs/s  ({args.pairs} pairs, batches of "
          f"{args.batch_size})")
    print(f"ratio     {result['ratio']:9.2f}x  on {result['device_name']} ({args.device})")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
