"""Five-point face alignment onto the 112×112 template of insightface/ArcFace."""
from __future__ import annotations

import numpy as np
from PIL import Image

# Left eye, right eye, nose tip, left and right mouth corners, in the 112×112
# crop used by insightface's validation sets (arcface_torch ``arcface_dst``).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
CROP_SIZE = 112


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping ``src`` to ``dst``.

    Umeyama's closed form, as skimage's ``SimilarityTransform.estimate``.

    Parameters
    ----------
    src, dst : ndarray of shape (n_points, 2)

    Returns
    -------
    ndarray of shape (2, 3)
        ``M`` with ``dst ≈ src @ M[:, :2].T + M[:, 2]``.

    Examples
    --------
    >>> src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> np.round(similarity_transform(src, 2 * src + 3), 6)
    array([[2., 0., 3.],
           [0., 2., 3.]])
    """
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (n>=2, 2) point arrays, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    reflect = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rot = u @ reflect @ vt
    scale = np.trace(np.diag(sigma) @ reflect) / s.var(0).sum()
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def check_landmarks(landmarks, *, source: str = "landmarks") -> np.ndarray:
    """``landmarks`` as a float (5, 2) array; anything else raises ``ValueError`` naming ``source``.

    Examples
    --------
    >>> check_landmarks([[1, 2]] * 5).shape
    (5, 2)
    >>> check_landmarks([[1, 2]] * 4, source="a.pts")
    Traceback (most recent call last):
    ...
    ValueError: a.pts: need 5 (x, y) landmarks (eyes, nose tip, mouth corners), got shape (4, 2)
    """
    pts = np.asarray(landmarks, float)
    if pts.shape != ARCFACE_TEMPLATE.shape:
        raise ValueError(f"{source}: need 5 (x, y) landmarks (eyes, nose tip, mouth corners), got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{source}: landmarks are not all finite: {pts.tolist()}")
    return pts


def apply_transform(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (n, 2) mapped by a (2, 3) affine matrix such as :func:`similarity_transform` returns.

    Examples
    --------
    >>> apply_transform(np.array([[2.0, 0, 3], [0, 2, 3]]), np.array([[1.0, 1.0]]))
    array([[5., 5.]])
    """
    return np.asarray(points, float) @ m[:, :2].T + m[:, 2]


def template_transform(landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The (2, 3) similarity mapping ``landmarks`` onto :data:`ARCFACE_TEMPLATE` scaled to a ``size`` crop."""
    return similarity_transform(check_landmarks(landmarks), ARCFACE_TEMPLATE * size / CROP_SIZE)


# Pixel (i, j) is centred on integer coordinates, as in the landmark files and
# in OpenCV's warpAffine (insightface's ``norm_crop``); PIL centres it on
# (i + 0.5, j + 0.5). Conjugating with this shift keeps a landmark that the
# transform sends to the template exactly on the template's pixel.
_TO_PIL = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])


def warp_to_template(image: Image.Image, landmarks: np.ndarray, size: int = CROP_SIZE) -> Image.Image:
    """Crop ``image`` so that its five ``landmarks`` land on :data:`ARCFACE_TEMPLATE`.

    Parameters
    ----------
    image : PIL image of any size
    landmarks : array of shape (5, 2)
        Eye centres (left, right as seen in the image), nose tip, mouth corners,
        in pixel coordinates of ``image``.
    size : int
        Side of the square crop; the template is scaled by ``size / 112``.

    Returns
    -------
    PIL RGB image of ``size`` × ``size``, bilinear, black outside ``image``.
    """
    m = np.vstack([template_transform(landmarks, size), [0, 0, 1]])
    # PIL maps each output pixel back into the input, so it wants the inverse.
    inv = (_TO_PIL @ np.linalg.inv(m) @ np.linalg.inv(_TO_PIL))[:2].ravel()
    return image.convert("RGB").transform((size, size), Image.Transform.AFFINE, tuple(inv), Image.Resampling.BILINEAR)


def centre_crop(image: Image.Image, size: int = CROP_SIZE) -> Image.Image:
    """The largest centred square of ``image``, resized to ``size`` × ``size`` (no face found).

    Examples
    --------
    >>> centre_crop(Image.new("RGB", (300, 200)), 112).size
    (112, 112)
    """
    w, h = image.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return image.convert("RGB").crop(box).resize((size, size), Image.Resampling.BILINEAR)
