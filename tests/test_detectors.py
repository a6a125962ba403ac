"""YuNet finds the five landmarks where the demo crops put them: in the crops as they are and in a
large photo that has to be shrunk, with no face in a blank image. The demo crops were aligned onto
the ArcFace template from dlib's 68 points, so the template is an independent reference."""
import numpy as np
import pytest
from PIL import Image

from facebench.align import ARCFACE_TEMPLATE
from facebench.detectors import YuNet, landmark_finder, yunet_entry
from facebench.paths import DEMO_DIR

# The Yale crops are a grey face under hard lighting; YuNet finds none of them at its default score.
COLOUR_CROPS = sorted(p for p in DEMO_DIR.glob("*.png") if not p.name.startswith("yale"))


@pytest.fixture(scope="module")
def yunet(open_models):
    return YuNet(open_models / yunet_entry()["file"])


def test_yunet_finds_every_colour_demo_face_on_the_template(yunet):
    errors = []
    for path in COLOUR_CROPS:
        points = yunet.landmarks(np.asarray(Image.open(path).convert("RGB")))
        assert points is not None, path.name
        errors.append(np.abs(points - ARCFACE_TEMPLATE).max())
    assert len(errors) == 15 and np.mean(errors) < 6 and max(errors) < 15, np.round(errors, 1)


def test_yunet_points_map_back_from_a_shrunk_photo(yunet):
    # a crop enlarged 4× into a 1400-px photo: detected at 640 px, reported in the photo's pixels
    crop = Image.open(DEMO_DIR / "biden.png").convert("RGB").resize((448, 448), Image.Resampling.BICUBIC)
    photo = Image.new("RGB", (1400, 1000), (128, 128, 128))
    photo.paste(crop, (500, 300))
    faces = yunet.detect(np.asarray(photo))
    assert len(faces) == 1 and faces[0, 14] >= 0.9
    x, y, w, h = faces[0, :4]
    assert 450 < x < 560 and 250 < y < 400 and 300 < w < 500 and 300 < h < 550, faces[0, :4]
    assert np.abs(faces[0, 4:14].reshape(5, 2) - (ARCFACE_TEMPLATE * 4 + [500, 300])).max() < 0.08 * 448


def test_no_face_is_none(yunet):
    blank = np.full((300, 200, 3), 128, np.uint8)
    assert yunet.detect(blank).shape == (0, 15) and yunet.landmarks(blank) is None


def test_unknown_aligner_is_refused():
    with pytest.raises(ValueError, match="aligner must be one of dlib, yunet, got 'mtcnn'"):
        landmark_finder("mtcnn")
