"""Which models exist, how a model spec resolves, and the interface every backend fills."""
from __future__ import annotations

import importlib.util
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from PIL import Image

from facebench.files import read_yaml
from facebench.paths import PACKAGE_DIR
from facebench.registry import Registry, UnknownNameError, suggest

BACKENDS: Registry[type["Verifier"]] = Registry(
    "backend", lazy={"dlib": "facebench.backends.dlib_resnet", "hf": "facebench.backends.hf_vlm",
                     "onnx": "facebench.backends.onnx_fr", "api": "facebench.backends.openai_api"}
)
# Backends that take their model from the spec itself, as ``prefix:argument``.
PREFIXES: dict[str, str] = {"hf": "hf", "onnx": "onnx", "api": "api"}


class Verifier:
    """A face verifier; subclasses fill either the embedding or the pair interface."""

    kind = ""
    requires: tuple[str, ...] = ()  # importable modules the backend needs
    # Settings that change how a run goes, never what it scores (concurrency, timeouts):
    # recorded in the manifest but kept out of the run's identity, so raising one resumes the run.
    runtime: frozenset[str] = frozenset()

    def info(self) -> dict:
        """Model id, revision and device, recorded in each run's manifest."""
        return {}

    @classmethod
    def identity(cls, settings: dict) -> dict:
        """What else, beyond the settings, makes results differ (e.g. a prompt template's version)."""
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
    def embed(self, images: list[Image.Image],
              landmarks: list[np.ndarray | None] | None = None) -> tuple[np.ndarray, list[str]]:
        """Embeddings, shape (n_images, dim), and a note per image (e.g. how the face was found).

        ``landmarks``, where given, has one entry per image: the dataset's five
        points as a (5, 2) array (see :mod:`facebench.align`), or None.
        """

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

    def _effective_settings(self) -> tuple[type[Verifier], dict]:
        cls = BACKENDS.get(self.backend)
        defaults = {k: v for k, v in _keyword_defaults(cls).items() if v is not inspect.Parameter.empty}
        return cls, {**defaults, **self.settings}

    def identity(self) -> dict:
        """The settings that change scores, as the backend will use them (its defaults
        filled in), so that changing a default in code starts new runs instead of mixing
        results. The backend's ``runtime`` settings are left out (:meth:`runtime_settings`)."""
        cls, settings = self._effective_settings()
        return {"settings": {k: v for k, v in settings.items() if k not in cls.runtime},
                **cls.identity(self.settings)}

    def runtime_settings(self) -> dict:
        """The backend's runtime-only settings (e.g. ``concurrency``) as this run uses them."""
        cls, settings = self._effective_settings()
        return {k: v for k, v in settings.items() if k in cls.runtime}

    def availability(self) -> tuple[bool, str]:
        """Whether this machine can run the model, and if not, why."""
        why = BACKENDS.get(self.backend).unavailable(self.settings)
        return (False, why) if why else (True, "available")


@lru_cache(maxsize=1)
def registry_document() -> dict:
    """``facebench/models.yaml`` as read: ``models`` and ``detectors``."""
    return read_yaml(PACKAGE_DIR / "models.yaml")


def registry_entries() -> dict[str, dict]:
    return registry_document()["models"]


def resolve(spec: str, settings: dict | None = None) -> ModelSpec:
    """Turn a model spec (a registry name or ``backend:argument``) into a :class:`ModelSpec`.

    ``settings`` override the entry's (e.g. ``{"prompt": "fr-ouinon"}``); a name
    the backend does not take is refused, since it would silently do nothing.
    """
    entries = registry_entries()
    if spec in entries:
        entry = entries[spec]
        resolved = ModelSpec(spec, entry["backend"], dict(entry.get("settings") or {}), entry)
    else:
        prefix, sep, arg = spec.partition(":")
        if not (sep and prefix in PREFIXES):
            prefixes = [f"{p}:" for p in PREFIXES]
            raise UnknownNameError(suggest(spec, [*entries, *prefixes], what="model"))
        resolved = ModelSpec(spec, PREFIXES[prefix], {"model": arg})
    if not settings:
        return resolved
    accepted = _keyword_defaults(BACKENDS.get(resolved.backend)) | {"model": None}
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ValueError(f"model {spec!r}: unknown setting(s) {unknown}; backend {resolved.backend!r} "
                         f"takes {sorted(accepted)}")
    return replace(resolved, settings={**resolved.settings, **settings})


def _keyword_defaults(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind is p.KEYWORD_ONLY}
