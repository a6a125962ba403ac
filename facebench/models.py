"""Which models exist, how a model spec resolves, and the interface every backend fills."""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import yaml
from PIL import Image

from facebench.paths import PACKAGE_DIR
from facebench.registry import Registry, UnknownNameError, suggest

BACKENDS: Registry[type["Verifier"]] = Registry(
    "backend", lazy={"dlib": "facebench.backends.dlib_resnet"}
)
# Backends that take their model from the spec itself, as ``prefix:argument``.
PREFIXES: dict[str, str] = {}


class Verifier:
    """A face verifier; subclasses fill either the embedding or the pair interface."""

    kind = ""
    requires: tuple[str, ...] = ()  # importable modules the backend needs

    def info(self) -> dict:
        """Model id, revision and device, recorded in each run's manifest."""
        return {}

    @classmethod
    def unavailable(cls, settings: dict) -> str | None:
        """Why this machine cannot run the model with ``settings`` (e.g. a missing
        package or weights file, and how to get it), or None when it can.

        Checked before a grid cell runs, so a missing model shows as
        "not available" in the grid and the book instead of failing them.
        """
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        return f"missing Python package(s): {', '.join(missing)}" if missing else None


class EmbeddingVerifier(Verifier, ABC):
    """Face-recognition models: one embedding per image, a similarity per pair."""

    kind = "embedding"

    @abstractmethod
    def embed(self, images: list[Image.Image]) -> tuple[np.ndarray, list[str]]:
        """Embeddings, shape (n_images, dim), and a note per image (e.g. how the face was found)."""

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise similarity of two (n, dim) arrays, higher = more alike."""
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return np.sum(a * b, axis=1)

    def decide(self, scores: np.ndarray) -> np.ndarray | None:
        """Hard decisions at the model's published threshold, or None if it has none."""
        return None


class PairVerifier(Verifier, ABC):
    """Models shown both images at once (MLLMs): one output per pair."""

    kind = "pair"

    @abstractmethod
    def score_pairs(self, pairs: list[tuple[Image.Image, Image.Image]]) -> list[dict]:
        """Per pair a dict with ``score``, ``decision`` (1/0/-1) and ``raw_output``."""


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: registry entry or ``prefix:argument`` spec."""

    spec: str
    backend: str
    settings: dict = field(default_factory=dict)
    entry: dict = field(default_factory=dict)

    def load(self) -> Verifier:
        return BACKENDS.get(self.backend)(**self.settings)

    def availability(self) -> tuple[bool, str]:
        """Whether this machine can run the model, and if not, why."""
        why = BACKENDS.get(self.backend).unavailable(self.settings)
        return (False, why) if why else (True, "available")


@lru_cache(maxsize=1)
def registry_entries() -> dict[str, dict]:
    data = yaml.safe_load((PACKAGE_DIR / "models.yaml").read_text())
    return data["models"]


def resolve(spec: str) -> ModelSpec:
    """Turn a model spec (a registry name or ``backend:argument``) into a :class:`ModelSpec`."""
    entries = registry_entries()
    if spec in entries:
        entry = entries[spec]
        return ModelSpec(spec, entry["backend"], dict(entry.get("settings") or {}), entry)
    prefix, sep, arg = spec.partition(":")
    if sep and prefix in PREFIXES:
        return ModelSpec(spec, PREFIXES[prefix], {"model": arg})
    prefixes = [f"{p}:" for p in PREFIXES]
    raise UnknownNameError(suggest(spec, [*entries, *prefixes], what="model"))
