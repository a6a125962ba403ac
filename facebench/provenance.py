"""What a result was made with: package versions, git commit, hashes of settings."""
from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata

from facebench.paths import PROJECT_ROOT

PACKAGES = ("facebench", "numpy", "pandas", "pillow", "dlib-bin", "face-recognition-models", "torch",
            "torchvision", "transformers", "tokenizers", "accelerate", "papermill")
# Whole words only: "hf_token" and "api_key" are secrets, "max_new_tokens" is not.
_SECRET = re.compile(r"(?:^|[_-])(?:key|token|secret|password|authorization|auth)(?:$|[_-])", re.I)


def canonical_hash(doc) -> str:
    """sha256 of ``doc`` as sorted, compact JSON: equal settings, equal hash."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def redact(doc):
    """A copy of ``doc`` with the values of secret-looking keys replaced, so that
    API keys given as settings never reach a manifest or a log."""
    if isinstance(doc, dict):
        return {k: "<redacted>" if _SECRET.search(str(k)) else redact(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [redact(v) for v in doc]
    return doc


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_state() -> dict:
    """Commit of the checkout and whether it had uncommitted changes (None outside git)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return {"commit": None, "dirty": None}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
