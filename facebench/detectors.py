"""Face detectors that give the five ArcFace landmarks of a photo's main face.

``dlib``: dlib's HOG detector and its 68-point model
(:func:`facebench.backends.dlib_resnet.detect_arcface_landmarks`).
``yunet``: OpenCV Zoo's YuNet (``detectors:`` in ``facebench/models.yaml``), run
through onnxruntime and decoded as OpenCV's ``FaceDetectorYN`` decodes it
(modules/objdetect/src/face_detect.cpp): per stride 8, 16, 32 and grid cell,
score √(cls·obj), box centre (c + dx, r + dy)·stride, size exp(dw, dh)·stride,
landmark k at (c + kx, r + ky)·stride; faces under its default score 0.9 are
dropped, then non-maximum suppression at IoU 0.3. Its five points come in the
template's order (eyes, nose tip, mouth corners, each left to right in the image),
the order ``FaceRecognizerSF::alignCrop`` warps them in.

A tight crop (the face fills the frame, as in many datasets' crops) often defeats
both detectors: :func:`find_landmarks` then looks again in the crop enlarged and
framed (:func:`pad_for_detection`) before giving up.
"""
from __future__ import annotations

from functools import cached_property, lru_cache
from typing import Callable

import numpy as np
from PIL import Image

ALIGNERS = ("dlib", "yunet")
STRIDES = (8, 16, 32)
SCORE_THRESHOLD, NMS_THRESHOLD = 0.9, 0.3  # FaceDetectorYN's defaults
# Chosen on tight crops (the landmarks' box plus 20-50 % per side, colour and grey) of the
# 16 faces in the demo set's source photos: enlarging small crops mattered most (YuNet scores
# a 60-px face just under its 0.9; dlib's HOG misses faces under ~80 px). A frame of a quarter
# of the side found as many as a half or a whole, on a smaller image. The crop's mean colour
# adds no edges; replicating the edge smeared hair outwards and found fewer; mirroring would
# add faces.
PAD_FRACTION, PAD_MIN_SIDE = 0.25, 224


def yunet_entry() -> dict:
    """YuNet's entry in ``facebench/models.yaml`` (``file``, ``sha256``, ``licence``, ``sources``)."""
    from facebench.models import registry_document

    return registry_document()["detectors"]["yunet"]


def nms(boxes: np.ndarray, scores: np.ndarray, *, iou: float = NMS_THRESHOLD) -> list[int]:
    """Indices of the boxes (x, y, w, h) greedy non-maximum suppression keeps, best score first.

    Examples
    --------
    >>> boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10]], float)
    >>> nms(boxes, np.array([0.8, 0.9, 0.95]))
    [2, 1]
    """
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    order, keep = list(np.argsort(-scores, kind="stable")), []
    while order:
        best, rest = order[0], np.array(order[1:], int)
        keep.append(int(best))
        w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        overlap = w * h / (area[best] + area[rest] - w * h)
        order = [int(i) for i, o in zip(rest, overlap) if o <= iou]
    return keep


class YuNet:
    """YuNet on onnxruntime (module docstring).

    Parameters
    ----------
    path : path
        The ONNX file (``face_detection_yunet_2023mar_int8bq.onnx``: raw BGR 0–255,
        declared as ``[1, 3, 640, 640]``; the longest side it is given).
    """

    def __init__(self, path):
        import onnx

        self.path = path
        graph = onnx.load(str(path), load_external_data=False).graph
        dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        self.input_name, self.max_side = graph.input[0].name, max(dims[2:4])

    @cached_property
    def _session(self):
        # the int8bq file needs repairs in memory before onnxruntime runs it at any size
        from facebench.backends.onnx_fr import inference_session

        return inference_session(self.path, ["CPUExecutionProvider"], free_size=True)[0]

    def detect(self, pixels: np.ndarray) -> np.ndarray:
        """Faces in an RGB uint8 image, shape (n, 15): box x, y, w, h, five (x, y) landmarks
        and the score, in the image's pixel coordinates, best score first.

        As OpenCV does, the image is padded with black at the right and bottom to a
        multiple of 32. An image larger than the graph's declared 640 px is first shrunk
        to fit (facebench's choice: YuNet finds faces of about 10 to 300 px, and a
        portrait photo's face is larger at full size).
        """
        h, w = pixels.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        image = Image.fromarray(pixels)
        if scale < 1:
            image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
        small = np.asarray(image, np.float32)[..., ::-1]  # BGR, as OpenCV reads images
        height, width = (-(-n // STRIDES[-1]) * STRIDES[-1] for n in small.shape[:2])
        canvas = np.zeros((height, width, 3), np.float32)
        canvas[:small.shape[0], :small.shape[1]] = small
        names = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES]
        out = dict(zip(names, self._session.run(names, {self.input_name: canvas.transpose(2, 0, 1)[None]})))
        faces = []
        for s in STRIDES:
            r, c = np.divmod(np.arange((height // s) * (width // s)), width // s)
            cell = np.stack([c, r], 1)
            score = np.sqrt(np.clip(out[f"cls_{s}"][0, :, 0], 0, 1) * np.clip(out[f"obj_{s}"][0, :, 0], 0, 1))
            bbox, kps = out[f"bbox_{s}"][0], out[f"kps_{s}"][0]
            size = np.exp(bbox[:, 2:4]) * s
            points = (kps.reshape(-1, 5, 2) + cell[:, None]) * s
            faces.append(np.hstack([(cell + bbox[:, :2]) * s - size / 2, size, points.reshape(-1, 10), score[:, None]]))
        faces = np.concatenate(faces)
        faces = faces[faces[:, 14] >= SCORE_THRESHOLD]
        faces = faces[nms(faces[:, :4], faces[:, 14])] if len(faces) else faces.reshape(0, 15)
        faces[:, :14] /= scale
        return faces

    def landmarks(self, pixels: np.ndarray) -> np.ndarray | None:
        """The five points (5, 2) of the largest face found, or None."""
        faces = self.detect(pixels)
        if not len(faces):
            return None
        return faces[np.argmax(faces[:, 2] * faces[:, 3]), 4:14].reshape(5, 2).astype(float)


def pad_for_detection(pixels: np.ndarray, *, fraction: float = PAD_FRACTION,
                      min_side: int = PAD_MIN_SIDE) -> tuple[np.ndarray, np.ndarray, int]:
    """A tight crop as a detector can find its face: enlarged, then framed.

    Parameters
    ----------
    pixels : ndarray of shape (h, w, 3), uint8
    fraction : float
        Width of the frame on each side, as a fraction of the enlarged image's longest side.
    min_side : int
        An image whose longest side is shorter is enlarged (bicubic) to this; a larger one
        keeps its size.

    Returns
    -------
    padded : ndarray, uint8
        The image, framed in its mean colour.
    scale : ndarray of shape (2,)
        Enlargement along x and y.
    pad : int
        Frame width in pixels. A point ``q`` of ``padded`` is at
        ``(q - pad + 0.5) / scale - 0.5`` in ``pixels`` (pixel centres on integers,
        as the landmarks are).

    Examples
    --------
    >>> padded, scale, pad = pad_for_detection(np.zeros((56, 112, 3), np.uint8))
    >>> padded.shape, scale.tolist(), pad
    ((224, 336, 3), [2.0, 2.0], 56)
    """
    h, w = pixels.shape[:2]
    k = max(1.0, min_side / max(h, w))
    size = (max(1, round(w * k)), max(1, round(h * k)))
    big = pixels if k == 1 else np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))
    pad = round(fraction * max(size))
    fill = pixels.reshape(-1, pixels.shape[-1]).mean(0).round().astype(np.uint8)
    out = np.empty((size[1] + 2 * pad, size[0] + 2 * pad, pixels.shape[-1]), np.uint8)
    out[...] = fill
    out[pad:pad + size[1], pad:pad + size[0]] = big
    return out, np.array([size[0] / w, size[1] / h]), pad


def find_landmarks(find: Callable[[np.ndarray], np.ndarray | None], pixels: np.ndarray,
                   *, retry: bool = True) -> tuple[np.ndarray | None, str | None]:
    """The five points ``find`` gives for ``pixels``, and where it found them.

    Parameters
    ----------
    find : callable
        As :func:`landmark_finder` returns.
    pixels : ndarray of shape (h, w, 3), uint8
    retry : bool
        Where ``find`` finds no face in the image as given, look again in
        :func:`pad_for_detection`'s version of it.

    Returns
    -------
    points : ndarray of shape (5, 2) in ``pixels``' coordinates, or None
    path : {"detected", "padded", None}
        The image as given, the padded one, or neither.
    """
    found = find(pixels)
    if found is not None:
        return found, "detected"
    if not retry:
        return None, None
    padded, scale, pad = pad_for_detection(pixels)
    found = find(padded)
    if found is None:
        return None, None
    return (found - pad + 0.5) / scale - 0.5, "padded"


@lru_cache(maxsize=2)
def _yunet(path: str) -> YuNet:
    return YuNet(path)


def landmark_finder(aligner: str, *, upsample: int = 1, yunet_path=None) -> Callable[[np.ndarray], np.ndarray | None]:
    """A function from an RGB uint8 image to the five ArcFace points of its largest face, or None.

    Parameters
    ----------
    aligner : {"dlib", "yunet"}
    upsample : int
        dlib's HOG upsampling.
    yunet_path : path
        YuNet's ONNX file, already verified (the onnx backend checks it).
    """
    if aligner == "dlib":
        from facebench.backends.dlib_resnet import detect_arcface_landmarks

        return lambda pixels: detect_arcface_landmarks(pixels, upsample=upsample)
    if aligner == "yunet":
        return _yunet(str(yunet_path)).landmarks
    raise ValueError(f"aligner must be one of {', '.join(ALIGNERS)}, got {aligner!r}")
