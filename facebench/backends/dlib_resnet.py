"""dlib's ResNet face recognition model (128-d descriptors, 99.38% on LFW in dlib's report).

Pipeline per image: HOG face detector → 5-point landmarks → aligned 150×150 chip
→ descriptor. The weights come from the ``face-recognition-models`` package.
"""
from __future__ import annotations

import threading
import warnings
from functools import lru_cache

import numpy as np
from PIL import Image

from facebench.models import BACKENDS, EmbeddingVerifier


def _weights():
    with warnings.catch_warnings():
        # face_recognition_models imports pkg_resources, which warns on import.
        warnings.simplefilter("ignore", UserWarning)
        import face_recognition_models

    return face_recognition_models


@BACKENDS.register("dlib")
class DlibResNet(EmbeddingVerifier):
    """dlib ResNet embeddings; score = minus the Euclidean distance.

    ``threshold`` is dlib's documented same-person distance cut-off (0.6): the
    decision ``distance < threshold`` is reported as a hard decision next to
    the 10-fold accuracy, whose thresholds are learned per fold.
    """

    requires = ("dlib", "face_recognition_models")

    def __init__(self, *, upsample: int = 1, num_jitters: int = 0, chip_size: int = 150,
                 chip_padding: float = 0.25, threshold: float = 0.6):
        self.upsample, self.num_jitters = int(upsample), int(num_jitters)
        self.chip_size, self.chip_padding = int(chip_size), float(chip_padding)
        self.threshold = float(threshold)

    @property
    def _dlib(self):
        import dlib

        return (dlib, _hog_detector(), *_recognition_models())

    def info(self) -> dict:
        import dlib

        return {"model_id": "dlib_face_recognition_resnet_model_v1", "revision": f"dlib {dlib.__version__}",
                "device": "cpu"}

    def face_box(self, pixels: np.ndarray):
        """The largest face the HOG detector finds, or ``None``."""
        dlib, detector, _, _ = self._dlib
        found = detector(pixels, self.upsample)
        return max(found, key=lambda r: r.area()) if len(found) else None

    def embed(self, images: list[Image.Image], landmarks=None) -> tuple[np.ndarray, list[str]]:
        # ``landmarks`` (a dataset's 5 points) are not used: dlib's network was
        # trained on chips aligned from its own 5-point model (eye corners and
        # nose base), a different set of points from the ArcFace template's.
        dlib, _, predictor, net = self._dlib
        out, notes = np.empty((len(images), 128), np.float32), []
        with _SHARED:
            for i, image in enumerate(images):
                pixels = np.ascontiguousarray(np.asarray(image.convert("RGB")))
                box = self.face_box(pixels)
                if box is None:
                    # Pre-aligned crops are often too tight for the HOG detector:
                    # the whole crop is the face.
                    box = dlib.rectangle(0, 0, pixels.shape[1] - 1, pixels.shape[0] - 1)
                    notes.append("whole_crop")
                else:
                    notes.append("detected")
                chip = dlib.get_face_chip(pixels, predictor(pixels, box), size=self.chip_size,
                                          padding=self.chip_padding)
                out[i] = np.asarray(net.compute_face_descriptor(chip, self.num_jitters))
        return out, notes

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return -np.linalg.norm(a - b, axis=1)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return (-scores < self.threshold).astype(float)


def arcface_landmarks(pixels: np.ndarray, box=None) -> np.ndarray:
    """Eye centres, nose tip and mouth corners from dlib's 68-point model, shape (5, 2).

    dlib's 5-point model marks eye corners and the nose base only, so the
    ArcFace template's five points are derived from the 68-point layout.
    """
    import dlib

    predictor = _shape_predictor_68()
    if box is None:
        box = dlib.rectangle(0, 0, pixels.shape[1] - 1, pixels.shape[0] - 1)
    pts = np.array([[p.x, p.y] for p in predictor(pixels, box).parts()], float)
    return np.array([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


@lru_cache(maxsize=1)
def _shape_predictor_68():
    # The 68-point model is a 100 MB file: load it once per process, not per face.
    import dlib

    return dlib.shape_predictor(_weights().pose_predictor_model_location())


# dlib's networks keep buffers between calls: instances share them (below), so one thread at a time.
_SHARED = threading.Lock()


@lru_cache(maxsize=1)
def _recognition_models():
    # Once per process, not per instance (as the HOG detector below): a grid or a test session
    # scores dlib run after run, and loading them and the detector cost most of a second each time.
    import dlib

    w = _weights()
    return (dlib.shape_predictor(w.pose_predictor_five_point_model_location()),
            dlib.face_recognition_model_v1(w.face_recognition_model_location()))


@lru_cache(maxsize=1)
def _hog_detector():
    import dlib

    return dlib.get_frontal_face_detector()


def detect_arcface_landmarks(pixels: np.ndarray, *, upsample: int = 1) -> np.ndarray | None:
    """The five ArcFace points (see :func:`arcface_landmarks`) of the largest face dlib's
    HOG detector finds in ``pixels`` (an RGB uint8 array), or None when it finds none."""
    found = _hog_detector()(np.ascontiguousarray(pixels), upsample)
    if not len(found):
        return None
    return arcface_landmarks(np.ascontiguousarray(pixels), max(found, key=lambda r: r.area()))
