"""Selective search proposals (OpenCV contrib): format, order, recall, padding, errors."""

import numpy as np
import pytest

from cnn_apps.data.shapes import make_scene
from cnn_apps.detection import proposals as proposals_mod
from cnn_apps.detection.proposals import (
    pad_proposals,
    proposal_recall,
    proposals_for_dataset,
    selective_search,
)
from cnn_apps.errors import ConfigError, DataError

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(0, "test", i, 96, "detection") for i in range(6)]


def test_format_and_bounds(scenes):
    image = scenes[0].image
    boxes = selective_search(image, num_threads=1, min_size=3)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 10
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 96).all()
    assert ((boxes[:, 2] - boxes[:, 0]) >= 3).all() and ((boxes[:, 3] - boxes[:, 1]) >= 3).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    assert len(selective_search(image, num_threads=1, max_proposals=7)) == 7


def test_keeps_opencv_order_and_is_repeatable(scenes):
    image = scenes[1].image
    boxes = selective_search(image, num_threads=1, min_size=0, seed=3)
    np.testing.assert_array_equal(boxes, selective_search(image, num_threads=1, min_size=0, seed=3))
    # the same search run by hand: x, y, w, h in OpenCV's order -> xyxy
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    search.switchToSelectiveSearchFast()
    proposals_mod._seed_c_rand(3)
    rects = search.process().astype(np.float32)
    expected = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1)
    np.testing.assert_array_equal(boxes, expected)
    # truncation keeps the head of the ranking
    np.testing.assert_array_equal(
        selective_search(image, num_threads=1, min_size=0, seed=3, max_proposals=20), boxes[:20]
    )


def test_scale_maps_boxes_back_and_threads_are_restored(scenes):
    before = cv2.getNumThreads()
    image = scenes[2].image
    small = selective_search(image, scale=0.5, num_threads=1)
    assert small.max() <= 96 and small.min() >= 0
    # scaled back: coordinates are multiples of 2 (up to the clip at the border)
    assert np.allclose(np.minimum(small, 96) % 2, 0)
    big = selective_search(image, scale=2.0, num_threads=1)
    assert big.max() <= 96 and len(big) > 0
    assert cv2.getNumThreads() == before


def test_recall_floor_on_shapes_fast_mode(scenes):
    props = proposals_for_dataset((s.image for s in scenes), num_threads=1, mode="fast")
    assert len(props) == len(scenes)
    np.testing.assert_array_equal(props[0], selective_search(scenes[0].image, num_threads=1))
    gts = [s.boxes for s in scenes]
    # measured on these 6 images (16 objects): 15 found (0.94) at IoU 0.5 and 0.7, top 100 and top 2000
    assert proposal_recall(props, gts, 0.5, 100) >= 0.9
    assert proposal_recall(props, gts, 0.7, 2000) >= 0.8
    # a proposal list that is the ground truth has recall 1; no proposals, 0
    assert proposal_recall(gts, gts, 0.99) == 1.0
    assert proposal_recall([np.zeros((0, 4))] * len(gts), gts) == 0.0


def test_images_of_other_types(scenes):
    gray = scenes[0].image.mean(-1)
    assert len(selective_search(gray, num_threads=1)) > 0
    as_float = scenes[0].image.astype(np.float32)
    np.testing.assert_array_equal(
        selective_search(as_float, num_threads=1), selective_search(scenes[0].image, num_threads=1)
    )
    with pytest.raises(DataError, match="RGB image"):
        selective_search(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ConfigError, match="mode"):
        selective_search(scenes[0].image, mode="slow")


def test_pad_proposals():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.zeros((0, 4), np.float32)
    c = np.ones((6, 4), np.float32)
    boxes, counts = pad_proposals([a, b, c], 5)
    assert boxes.shape == (3, 5, 4) and boxes.dtype == np.float32
    assert counts.tolist() == [3, 0, 5] and counts.dtype == np.int32
    np.testing.assert_array_equal(boxes[0, :3], a)
    assert (boxes[0, 3:] == -1).all() and (boxes[1] == -1).all() and (boxes[2] == 1).all()


def test_missing_contrib_names_the_fix(monkeypatch, scenes):
    monkeypatch.delattr(cv2, "ximgproc", raising=False)
    with pytest.raises(ConfigError, match="opencv-contrib-python-headless"):
        selective_search(scenes[0].image)
    with pytest.raises(ConfigError, match="ximgproc"):
        proposals_for_dataset([scenes[0].image])
