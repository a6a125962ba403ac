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


def warp_to_template(image: Image.Image, landmarks: np.ndarray, size: int = CROP_SIZE) -> Image.Image:
    """Crop ``image`` so that its five ``landmarks`` land on :data:`ARCFACE_TEMPLATE`."""
    m = np.vstack([similarity_transform(landmarks, ARCFACE_TEMPLATE * size / CROP_SIZE), [0, 0, 1]])
    # PIL maps each output pixel back into the input, so it wants the inverse.
    inv = np.linalg.inv(m)[:2].ravel()
    return image.convert("RGB").transform((size, size), Image.Transform.AFFINE, tuple(inv), Image.Resampling.BILINEAR)
