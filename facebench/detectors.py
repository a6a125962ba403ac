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
"""
from __future__ import annotations

from functools import cached_property, lru_cache
from typing import Callable

import numpy as np
from PIL import Image

ALIGNERS = ("dlib", "yunet")
STRIDES = (8, 16, 32)
SCORE_THRESHOLD, NMS_THRESHOLD = 0.9, 0.3  # FaceDetectorYN's defaults


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
