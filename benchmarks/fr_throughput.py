"""Embedding throughput of a face-recognition model, in images per second.

    python benchmarks/fr_throughput.py --model arcface-r50 --dataset demo --device cpu --json
    python benchmarks/fr_throughput.py --model onnx:/path/to/model.onnx --device cuda
    python benchmarks/fr_throughput.py --model dlib
    python benchmarks/fr_throughput.py --model sface --aligner yunet --compare-aligners --json

Each unique image of the dataset is embedded once per repeat, in batches as
``facebench evaluate`` sends them (with the dataset's landmarks where it has
them). The clock covers alignment, preprocessing and the forward pass only:
the model is loaded, the images decoded and one warm-up batch run before it
starts. The figure reported is the median over ``--repeat`` passes, with the
machine it ran on. ``--aligner`` sets an ONNX model's aligner (dlib or yunet).
``--compare-aligners`` also times each aligner alone on the same images, as
they are: images per second and the fraction in which it found a face.

Exit status: 0 measured; 2 the model is not available on this machine (e.g. its
weights file is missing; the message says where to put it); 1 other errors.
With ``--json`` the last stdout line is strict JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter

NOT_AVAILABLE = 2


def measure(verifier, images: list, landmarks: list, *, batch_size: int, repeat: int) -> tuple[list[float], list[str]]:
    """Seconds per pass over ``images`` and the per-image notes of the last pass."""
    has_landmarks = any(p is not None for p in landmarks)

    def one_pass(count: int | None = None) -> list[str]:
        notes = []
        stop = len(images) if count is None else count
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, stop)
            extra = {"landmarks": landmarks[start:end]} if has_landmarks else {}
            notes += verifier.embed(images[start:end], **extra)[1]
        return notes

    one_pass(min(batch_size, len(images)))  # warm-up: session start, CUDA kernels, lazy detector loads
    seconds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        notes = one_pass()
        seconds.append(time.perf_counter() - t0)
    return seconds, notes


def machine() -> dict:
    """The CPU, core count and platform the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}


def compare_aligners(images: list, *, upsample: int = 1) -> dict:
    """Per aligner: images/s of finding the five landmarks in each image as it is, the fraction
    of images in which it found a face, or why it cannot run here."""
    import numpy as np

    from facebench.backends.onnx_fr import aligner_problem, model_path
    from facebench.detectors import ALIGNERS, landmark_finder, yunet_entry

    pixels = [np.ascontiguousarray(np.asarray(im.convert("RGB"))) for im in images]
    out = {}
    for aligner in ALIGNERS:
        why = aligner_problem(aligner)
        if why:
            out[aligner] = {"not_available": why}
            continue
        find = landmark_finder(aligner, upsample=upsample, yunet_path=model_path(yunet_entry()["file"]))
        find(pixels[0])  # warm-up: model loads
        t0 = time.perf_counter()
        found = sum(find(p) is not None for p in pixels)
        seconds = time.perf_counter() - t0
        out[aligner] = {"images_per_s": round(len(pixels) / seconds, 2), "found": found,
                        "fraction_found": round(found / len(pixels), 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="registry name (e.g. arcface-r50, sface, dlib) or onnx:<file>")
    p.add_argument("--dataset", default="demo")
    p.add_argument("--root", help="dataset root (default: FACEBENCH_DATA or data/)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="execution device (auto: CUDA where available)")
    p.add_argument("--batch-size", type=int, default=32, help="images per embed call (default 32)")
    p.add_argument("--repeat", type=int, default=3, help="timed passes; the median is reported (default 3)")
    p.add_argument("--limit", type=int, help="time only the first N unique images")
    p.add_argument("--aligner", choices=["dlib", "yunet"], help="an ONNX model's aligner (default: its setting)")
    p.add_argument("--compare-aligners", action="store_true",
                   help="also time dlib and YuNet alone on the images: images/s and fraction of faces found")
    p.add_argument("--json", action="store_true", help="end with one strict-JSON line")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.repeat < 1:
        p.error("--batch-size and --repeat must be at least 1")

    from facebench.datasets import load_dataset
    from facebench.models import resolve

    spec = resolve(args.model, {"aligner": args.aligner} if args.aligner else None)
    ok, why = spec.availability()
    if not ok:
        print(f"{args.model}: not available: {why}", file=sys.stderr)
        return NOT_AVAILABLE
    if spec.backend == "dlib" and args.device == "cuda":
        import dlib

        if not dlib.DLIB_USE_CUDA:
            print(f"{args.model}: not available on cuda: this dlib is built without CUDA", file=sys.stderr)
            return NOT_AVAILABLE
    verifier = spec.load()
    if verifier.kind != "embedding":
        print(f"{args.model} is not an embedding model; use benchmarks/mllm_throughput.py", file=sys.stderr)
        return 1
    if hasattr(verifier, "device"):
        verifier.device = args.device
    if hasattr(verifier, "batch_size"):  # the backend's own cap per forward pass
        verifier.batch_size = args.batch_size

    ds = load_dataset(args.dataset, args.root)
    keys = ds.image_keys()[:args.limit]
    images = [ds.images.load(k) for k in keys]
    landmarks = [ds.images.landmarks(k) for k in keys]
    seconds, notes = measure(verifier, images, landmarks, batch_size=args.batch_size, repeat=args.repeat)
    median = statistics.median(seconds)
    info = verifier.info()
    result = {
        "benchmark": "fr_throughput", "model": spec.spec, "backend": spec.backend, "dataset": ds.name,
        "n_images": len(images), "batch_size": args.batch_size, "repeat": args.repeat,
        "seconds": [round(s, 4) for s in seconds], "images_per_s": round(len(images) / median, 2),
        "device": info.get("device"), "provider": info.get("provider"), "model_id": info.get("model_id"),
        "sha256": info.get("sha256"), "aligner": info.get("preprocessing", {}).get("aligner"),
        "alignment": dict(Counter(notes)), "machine": machine(),
    }
    print(f"{spec.spec} on {ds.name}: {result['images_per_s']} images/s ({len(images)} images, batch "
          f"{args.batch_size}, median of {args.repeat}, device {result['device']}, {result['machine']['cpu']}, "
          f"{result['machine']['cores']} cores)")
    if args.compare_aligners:
        result["aligners"] = compare_aligners(images, upsample=spec.settings.get("upsample", 1))
        for name, r in result["aligners"].items():
            print(f"  aligner {name}: " + (f"not available: {r['not_available']}" if "not_available" in r else
                                            f"{r['images_per_s']} images/s, a face found in {r['found']} of "
                                            f"{len(images)} images"))
    if args.json:
        print(json.dumps(result, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
