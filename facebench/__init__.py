"""facebench: multimodal LLMs against face-recognition models on face verification.

The one-call API::

    import facebench
    run = facebench.evaluate("dlib", "demo")      # scores (resuming) and stores per-pair results
    run.metrics()["accuracy_mean"]
    scorer = facebench.get_scorer("dlib")         # or score your own image pairs
    scorer([(img_a, img_b)])                       # one score per pair, higher = same person
"""
__version__ = "0.1.0"

_API = {
    "evaluate": "facebench.scoring", "open_run": "facebench.scoring", "get_scorer": "facebench.scoring",
    "load_dataset": "facebench.datasets", "check_dataset": "facebench.integrity",
    "import_results": "facebench.importing", "verification_report": "facebench.metrics",
}
__all__ = sorted(_API)


def __getattr__(name):
    # Import on first use: `import facebench` stays fast, and the CLI only pays for what it runs.
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'facebench' has no attribute {name!r}")
