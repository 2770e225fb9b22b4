"""Fast R-CNN: proposals carried through the pipeline (moved with their images, never
dropped), the on-disk proposal cache, the model (train step, detect, .keras round trip),
its SavedModel with a proposals input, and a tiny run through the CLI."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import set_args, tiny_overrides

from cnn_apps.config import AugmentConfig, load_config
from cnn_apps.data.pipeline import flip_example, make_pipeline, translate_example
from cnn_apps.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 48
RECT = (10, 8, 22, 20)  # x0, y0, x1, y1 of the white rectangle
P = 5


def _scene(rect=RECT, size=SIZE):
    image = np.full((size, size, 3), 50, np.uint8)  # grey: the padding a shift brings in is black
    image[rect[1] : rect[3], rect[0] : rect[2]] = 255
    proposals = np.array(
        [rect, [0, 0, size, size], [size - 4, size - 4, size, size], [-1, -1, -1, -1], [-1, -1, -1, -1]],
        np.float32,
    )
    return {
        "image": tf.constant(image),
        "boxes": tf.constant([rect], tf.float32),
        "labels": tf.constant([1], tf.int64),
        "proposals": tf.constant(proposals),
    }


def _white_box(image, level=127):
    """xyxy of the pixels above ``level`` of an (H, W, C) image, or -1s when none is left."""
    ys, xs = np.nonzero(np.asarray(image)[..., 0] > level)
    if len(xs) == 0:
        return np.full(4, -1.0, np.float32)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_proposals_move_with_flips_and_translations_and_are_never_dropped(seed):
    s = tf.constant([seed, 7], tf.int64)
    flipped = flip_example(_scene(), s)
    props = flipped["proposals"].numpy()
    assert props.shape == (P, 4)
    np.testing.assert_array_equal(props[0], _white_box(flipped["image"]))  # exact: a flip moves whole pixels
    np.testing.assert_array_equal(props[0], flipped["boxes"].numpy()[0])
    np.testing.assert_array_equal(props[1], [0, 0, SIZE, SIZE])
    np.testing.assert_array_equal(props[3:], -1)  # padding stays padding
    moved = translate_example(_scene(), 0.3, s)
    props = moved["proposals"].numpy()
    assert props.shape == (P, 4)  # never dropped, order kept
    np.testing.assert_array_equal(props[0], _white_box(moved["image"]))  # shifted and clipped like the pixels
    np.testing.assert_array_equal(
        props[1], _white_box(moved["image"], 0)
    )  # the whole image: what is left of it
    np.testing.assert_array_equal(props[3:], -1)


def test_a_proposal_pushed_outside_becomes_padding():
    corner = []
    for k in range(24):
        props = translate_example(_scene(), 0.3, tf.constant([k, 1], tf.int64))["proposals"].numpy()
        assert props.shape == (P, 4)
        valid = (props[2, 2] > props[2, 0]) and (props[2, 3] > props[2, 1])
        corner.append(valid)
        if not valid:
            np.testing.assert_array_equal(props[2], -1)  # zero-area padding, not a dropped row
        else:
            assert 0 <= props[2, 0] < props[2, 2] <= SIZE and 0 <= props[2, 1] < props[2, 3] <= SIZE
    assert any(corner) and not all(corner)  # the 4 px corner box leaves the image for some shifts


def _dataset(n=6):
    scenes = [_scene((4 + 3 * i, 6 + 2 * i, 20 + 3 * i, 18 + 2 * i)) for i in range(n)]
    items = {k: tf.stack([s[k] for s in scenes]) for k in ("image", "boxes", "labels")}
    proposals = np.stack([s["proposals"].numpy() for s in scenes])
    return tf.data.Dataset.from_tensor_slices(items), proposals


def test_pipeline_carries_proposals_through_every_augmentation():
    ds, proposals = _dataset()
    cfg = AugmentConfig(flip=True, translate=0.1, scale=[0.8, 1.2], crop=0.5, crop_min_fraction=0.7)
    out = make_pipeline(
        ds,
        task="detection",
        image_size=SIZE,
        batch_size=3,
        training=True,
        augment=cfg,
        seed=1,
        num_examples=6,
        proposals=proposals,
    )
    seen = 0
    for x, y in out:
        assert set(x) == {"images", "proposals"} and x["proposals"].shape == (3, P, 4)
        for image, props, boxes in zip(x["images"].numpy(), x["proposals"].numpy(), y["boxes"].numpy()):
            white = _white_box(image)
            # proposal 0 is the rectangle: it moves as the pixels do (resizing blurs edges by a pixel or two)
            np.testing.assert_allclose(props[0], white, atol=2.0)
            if (boxes[:, 2] > boxes[:, 0]).any():
                np.testing.assert_allclose(props[0], boxes[0], atol=1e-4)  # and exactly as its box
            np.testing.assert_array_equal(props[3:], -1)
            seen += 1
    assert seen == 6
    with pytest.raises(DataError, match="proposal sets for 5 examples"):
        make_pipeline(
            ds.take(5),
            task="detection",
            image_size=SIZE,
            batch_size=3,
            training=False,
            num_examples=5,
            proposals=proposals,
        )


def test_pipeline_resizes_proposals_with_their_images():
    ds, proposals = _dataset(2)
    x, _ = next(
        iter(
            make_pipeline(
                ds,
                task="detection",
                image_size=SIZE,
                batch_size=2,
                training=False,
                num_examples=2,
                proposals=proposals,
            )
        )
    )
    np.testing.assert_array_equal(x["proposals"].numpy(), proposals)  # already at the model's size: unchanged
    from cnn_apps.data.pipeline import resize_example

    half = resize_example({**_scene(), "proposals": tf.constant(proposals[0])}, SIZE // 2)
    np.testing.assert_allclose(half["proposals"].numpy()[:3], proposals[0][:3] / 2)
    np.testing.assert_array_equal(half["proposals"].numpy()[3:], -1)


# ---------------------------------------------------------------------- the cache
def _prepared(tmp_path):
    from cnn_apps.data.sources import get_source

    config = load_config(
        None,
        [
            "task=detection",
            "data.source=shapes",
            "data.image_size=32",
            "data.train_size=4",
            "data.val_size=2",
            "data.test_size=3",
            f"data.data_dir={tmp_path / 'data'}",
        ],
    )
    return config, get_source(config).prepare()


def test_proposal_cache_is_computed_once_and_reused(tmp_path, monkeypatch):
    from cnn_apps.data import proposal_cache
    from cnn_apps.data.proposal_cache import ProposalSettings, cache_path, split_proposals
    from cnn_apps.tasks.inputs import split_dataset

    config, spec = _prepared(tmp_path)
    calls = []
    real = proposal_cache.selective_search

    def counting(image, **kwargs):
        calls.append(image.shape)
        return real(image, **kwargs)

    monkeypatch.setattr(proposal_cache, "selective_search", counting)
    settings = ProposalSettings(mode="fast", count=8)
    first = split_proposals(spec, config, "test", settings)
    assert first.shape == (3, 8, 4) and calls == [(32, 32, 3)] * 3
    path = cache_path(config.data.data_dir, spec.fingerprint, "test", 32, settings)
    assert path.is_file() and path.parent.parent == tmp_path / "data" / "proposals"
    again = split_proposals(spec, config, "test", settings)
    assert len(calls) == 3  # read back, no search
    np.testing.assert_array_equal(again, first)
    split_proposals(spec, config, "test", ProposalSettings(mode="fast", count=4))  # another key: computed
    assert len(calls) == 6
    # the stages' loader feeds them as model inputs
    x, y = next(iter(split_dataset(spec, config, "test", training=False, batch_size=3, proposals=settings)))
    assert len(calls) == 6
    assert x["images"].shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(x["proposals"].numpy(), first)
    plain, _ = next(iter(split_dataset(spec, config, "test", training=False, batch_size=3)))
    assert plain.shape == (3, 32, 32, 3)  # models without proposals: unchanged


# ---------------------------------------------------------------------- the model
TINY = {
    "backbone_args": {"stage_filters": [8, 16, 16, 32]},
    "head_units": [32],
    "max_proposals": 24,
    "roi_batch_per_image": 16,
    "postprocess": {"score_threshold": 0.0},
}


def _batch(n=4, size=64, count=24):
    from cnn_apps.data.proposal_cache import ProposalSettings, propose
    from cnn_apps.data.shapes import make_scene

    scenes = [make_scene(0, "train", i, size, "detection") for i in range(n)]
    images = np.stack([s.image for s in scenes]).astype(np.float32)
    boxes = -np.ones((n, 4, 4), np.float32)
    labels = -np.ones((n, 4), np.int64)
    for i, s in enumerate(scenes):
        boxes[i, : len(s.boxes)] = s.boxes
        labels[i, : len(s.labels)] = s.labels
    proposals, _ = propose(images, ProposalSettings(count=count))
    return {"images": images, "proposals": proposals}, {"boxes": boxes, "labels": labels}


def test_fast_rcnn_trains_detects_and_reloads(tmp_path):
    import keras

    from cnn_apps import registry
    from cnn_apps.detection.fast_rcnn import FastRCNN

    keras.utils.set_random_seed(0)
    x, y = _batch()
    model = registry.get("detector", "fast_rcnn")(4, image_size=64, **TINY)
    assert isinstance(model, FastRCNN) and model.proposal_settings == {"mode": "fast", "count": 24}
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, y, epochs=6, batch_size=2, verbose=0)  # the paper's 2 images per batch
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert {"classification_loss", "box_loss"} <= set(history.history)
    out = model.predict(x, verbose=0)
    assert out["boxes"].shape == (4, 100, 4) and out["scores"].shape == (4, 100)
    assert out["labels"].shape == (4, 100) and (out["num_detections"] > 0).all()
    # padding proposals give no detections
    empty = {"images": x["images"][:1], "proposals": -np.ones((1, 24, 4), np.float32)}
    assert int(model.predict(empty, verbose=0)["num_detections"][0]) == 0
    path = tmp_path / "fast.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    assert isinstance(again, FastRCNN) and again.get_config() == model.get_config()
    np.testing.assert_allclose(again.predict(x, verbose=0)["scores"], out["scores"], atol=1e-5)


def test_fast_rcnn_export_takes_proposals_in_the_callers_pixels(tmp_path):
    import keras

    from cnn_apps.detection.fast_rcnn import FastRCNN
    from cnn_apps.serving import encode_png, export_detector, image_input_shape, verify_detector_export

    keras.utils.set_random_seed(0)
    x, _ = _batch(2)
    model = FastRCNN(4, image_size=64, **TINY)
    assert image_input_shape(model) == (64, 64, 3)
    path = tmp_path / "1"
    export_detector(model, path, model.class_names)
    diffs = verify_detector_export(path, model, x["images"])  # proposals by the model's own selective search
    assert max(diffs.values()) < 1e-4
    loaded = tf.saved_model.load(str(path))
    for name in ("serving_default", "serve_uint8", "serve_bytes"):
        assert set(loaded.signatures[name].structured_input_signature[1]) == {"images", "proposals"}
    # fewer proposals than the model's P, in a 2x image's pixels: padded, scaled back
    big = np.repeat(np.repeat(x["images"][:1], 2, axis=1), 2, axis=2)
    props = x["proposals"][:1, :10]
    out = loaded.signatures["serve_bytes"](
        images=tf.constant(encode_png(big)), proposals=tf.constant(props * 2)
    )
    resized = tf.image.resize(big, (64, 64), method="bilinear", antialias=True).numpy()
    padded = np.concatenate([props, -np.ones((1, 14, 4), np.float32)], axis=1)
    want = model.detect({"images": resized, "proposals": padded})
    n = int(want["num_detections"][0])
    assert int(out["num_detections"][0]) == n > 0
    np.testing.assert_allclose(
        out["detection_boxes"].numpy()[0, :n], want["boxes"].numpy()[0, :n] * 2, atol=1e-3
    )


# ---------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_fast_rcnn_through_the_cli(tmp_path, capsys, monkeypatch):
    import mlflow

    from cnn_apps.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = tiny_overrides(
        tmp_path, **{"data.image_size": 64, "detection.score_threshold": 0.01, "training.batch_size": 8}
    ) + [
        "model.backbone_args={stage_filters: [8, 16, 16, 32]}",
        "model.architecture_args={max_proposals: 32, head_units: [32], roi_batch_per_image: 16}",
    ]
    args = ["all", "--config", str(ROOT / "pipelines" / "configs" / "shapes_fast_rcnn.yaml"), *set_args(sets)]
    rc = main(args)
    out = capsys.readouterr().out
    assert rc == 0, out
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = {
        r.data.tags["stage"]: r
        for r in client.search_runs([client.get_experiment_by_name("detection").experiment_id])
    }
    assert set(runs) == {"prepare", "train", "evaluate", "export"}
    train, evaluate = runs["train"], runs["evaluate"]
    assert {"train_box_loss", "train_classification_loss", "val_map50"} <= set(train.data.metrics)
    metrics = evaluate.data.metrics
    for name in (
        "test_map50",
        "test_coco_ap",
        "test_images_per_s",
        "test_latency_ms",
        "test_proposal_ms",
        "test_network_latency_ms",
    ):
        assert np.isfinite(metrics[name]), name
    assert metrics["test_proposal_ms"] > 0
    assert (
        metrics["test_latency_ms"] >= metrics["test_network_latency_ms"] + metrics["test_proposal_ms"] - 1e-6
    )
    cached = list((tmp_path / "data" / "proposals").rglob("*.npz"))
    assert {p.name.split("-")[0] for p in cached} == {"train", "validation", "test"}
    assert all("64px-fast-32" in p.name for p in cached)
    # the export takes the proposals as an input
    loaded = tf.saved_model.load(runs["export"].data.tags["export_path"])
    sig = loaded.signatures["serving_default"]
    result = sig(images=tf.zeros((1, 80, 80, 3)), proposals=tf.constant([[[0.0, 0.0, 40.0, 40.0]]]))
    assert result["detection_boxes"].shape == (1, 100, 4)


def test_fast_rcnn_bad_arguments_and_feature_levels_by_stride():
    from cnn_apps.detection.fast_rcnn import FastRCNN
    from cnn_apps.errors import ConfigError, ModelArgumentError

    with pytest.raises(ModelArgumentError, match=r"proposal_mode must be one of .*'fast'.*got 'slow'"):
        FastRCNN(3, image_size=64, proposal_mode="slow", **TINY)
    with pytest.raises(ConfigError, match="max_proposals must be at least 1, got 0"):
        FastRCNN(3, image_size=64, **{**TINY, "max_proposals": 0})
    with pytest.raises(ValueError, match=r"FastRCNN: class_names has 2 class names for num_classes=3"):
        FastRCNN(3, image_size=64, class_names=["a", "b"], **TINY)
    old = FastRCNN(3, image_size=64, feature_level="C4", **TINY)
    new = FastRCNN(3, image_size=64, feature_level="P4", **TINY)  # stride 16: 4 x 4 at 64 px
    assert old.feature_shape == new.feature_shape == (4, 4, 32)
    assert old.count_params() == new.count_params()
    assert new.get_config()["feature_level"] == "P4" and new.class_names == ["0", "1", "2"]
