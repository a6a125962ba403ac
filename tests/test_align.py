"""Five-point alignment: the similarity fit, the warp's pixel convention, and input checks."""
import numpy as np
import pytest
from PIL import Image

from facebench.align import (ARCFACE_TEMPLATE, apply_transform, centre_crop, check_landmarks,
                             similarity_transform, template_transform, warp_to_template)


def similarity(scale: float, degrees: float, shift) -> np.ndarray:
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return np.hstack([scale * rot, np.asarray(shift, float)[:, None]])


def face_points(scale: float, degrees: float, shift, *, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Where the template's points sit in a photo that is the template moved by a known similarity."""
    pts = apply_transform(similarity(scale, degrees, shift), ARCFACE_TEMPLATE)
    return pts + np.random.default_rng(seed).uniform(-noise, noise, pts.shape)


def spots(points: np.ndarray, size: tuple[int, int], *, sigma: float = 2.0) -> Image.Image:
    """A black image with a Gaussian spot centred on each point (pixel centres at integers)."""
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) for x, y in points)
    return Image.fromarray((255 * img / img.max()).astype(np.uint8)).convert("RGB")


def centroids(image: Image.Image, near: np.ndarray, radius: float = 6.0) -> np.ndarray:
    a = np.asarray(image)[..., 0].astype(float)
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    out = []
    for x, y in near:
        w = a * (((xx - x) ** 2 + (yy - y) ** 2) < radius**2)
        out.append([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    return np.array(out)


@pytest.mark.parametrize("scale, degrees, shift", [(1.0, 0, (0, 0)), (2.7, 17, (140, 55)),
                                                   (0.55, -33, (10, 200)), (1.3, 180, (300, 300))])
def test_known_similarity_is_recovered_exactly(scale, degrees, shift):
    src = face_points(scale, degrees, shift)
    m = similarity_transform(src, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(apply_transform(m, src), ARCFACE_TEMPLATE, atol=1e-9)
    # the inverse of the transform that made the points
    inv = np.linalg.inv(np.vstack([similarity(scale, degrees, shift), [0, 0, 1]]))[:2]
    np.testing.assert_allclose(m, inv, atol=1e-9)


def test_noisy_landmarks_land_on_the_template_within_half_a_pixel():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        scale = rng.uniform(0.5, 4.0)
        src = face_points(scale, rng.uniform(-40, 40), rng.uniform(0, 400, 2), noise=0.3 * scale, seed=seed)
        mapped = apply_transform(template_transform(src), src)
        assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 0.5, seed


def test_mirrored_landmarks_give_a_rotation_not_a_reflection():
    src = face_points(1.5, 10, (50, 50))[[1, 0, 2, 4, 3]]  # left/right swapped, as in a mirror image
    m = similarity_transform(src, ARCFACE_TEMPLATE)
    assert np.linalg.det(m[:, :2]) > 0


@pytest.mark.parametrize("scale, degrees, shift", [(0.5, 0, (20, 30)), (1.0, 0, (40.5, 60.25)),
                                                   (1.8, 25, (150, 60)), (3.0, -12, (60, 150))])
def test_warp_puts_marked_points_on_the_template(scale, degrees, shift):
    points = face_points(scale, degrees, shift)
    photo = spots(points, (500, 500), sigma=1.5 * scale)
    crop = warp_to_template(photo, points)
    assert crop.size == (112, 112) and crop.mode == "RGB"
    found = centroids(crop, ARCFACE_TEMPLATE)
    # A half-pixel convention error would show as (1 - 1/scale) / 2 px, e.g. 0.5 px at scale 0.5.
    assert np.abs(found - ARCFACE_TEMPLATE).max() < 0.1, found - ARCFACE_TEMPLATE


def test_warp_to_a_larger_crop_scales_the_template():
    points = face_points(2.0, 5, (100, 80))
    crop = warp_to_template(spots(points, (500, 500), sigma=3.0), points, size=224)
    assert crop.size == (224, 224)
    target = ARCFACE_TEMPLATE * 2
    assert np.abs(centroids(crop, target, radius=10) - target).max() < 0.1


def test_landmark_input_is_checked():
    with pytest.raises(ValueError, match=r"rfw/x_lmk\.txt: need 5 .*shape \(10,\)"):
        check_landmarks(np.zeros(10), source="rfw/x_lmk.txt")
    bad = np.ones((5, 2))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="not all finite"):
        check_landmarks(bad)
    with pytest.raises(ValueError, match="landmarks: need 5"):
        warp_to_template(Image.new("RGB", (50, 50)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(5, 2\) and \(4, 2\)"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))


def test_centre_crop_takes_the_middle_square():
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, 100:200] = 255  # the middle square is white, the sides black
    crop = np.asarray(centre_crop(Image.fromarray(a), 50))
    assert crop.shape == (50, 50, 3)
    assert crop.min() == 255
