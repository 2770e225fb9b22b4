"""Scoring by the official rules on real-data layouts: ignore regions (VOC difficult, COCO crowd),
the source resolution, COCO metrics from pycocotools on the logged files, and segmentation mIoU
on the original masks. References are independent of the code under test: the original
annotation files read with pycocotools or PIL, and NumPy confusion matrices."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import set_args, tiny_overrides
from PIL import Image

from cnn_apps.config import load_config
from cnn_apps.data.sources import get_source

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64  # the model's input side in these tests

# (width, height) of the COCO fixture's images: several sizes and aspect ratios, none the model's
COCO_SIZES = [(120, 80), (200, 150), (96, 128), (160, 90), (80, 80), (240, 160), (100, 140), (180, 120)]


def _noise(path: Path, w: int, h: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _coco_fixture(tmp_path: Path) -> Path:
    """Eight images of several sizes; categories 3 (car) and 18 (dog); each image has a small
    (< 32² px), a medium and (most) a large box at the source resolution, and a crowd region.
    One annotation's ``area`` (its mask area on real COCO) differs from its box area."""
    images, annotations = [], []
    for k, (w, h) in enumerate(COCO_SIZES):
        _noise(tmp_path / "imgs" / f"{k}.png", w, h, k)
        images.append({"id": 100 + k, "file_name": f"{k}.png", "width": w, "height": h})
        boxes = [
            (3, [2.0, 3.0, 20.0, 14.0], 0),  # small: 280 px²
            (18, [w * 0.4, h * 0.3, 45.0, 40.0], 0),  # medium: 1,800 px²
            (3, [w * 0.1, h * 0.5, w * 0.8, h * 0.45], 0),  # large for most images
            (18, [w * 0.55, 1.0, w * 0.4, h * 0.25], 1),  # a crowd region
        ]
        for category, bbox, crowd in boxes:
            area = bbox[2] * bbox[3] if len(annotations) != 5 else 500.0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + k,
                    "category_id": category,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": crowd,
                }
            )
    categories = [{"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


class Oracle:
    """A "detector" that returns the model-size truth of each batch (ignore regions included)
    with score 0.9, plus (``false_positive``) one false positive per image at score 0.95: what a
    detector that found everything would output, so the scoring, not a network, is under test."""

    def __init__(self, ds, false_positive: bool = True):
        self.targets = [{k: np.asarray(v) for k, v in y.items()} for _, y in ds]
        self.false_positive = false_positive

    def predict_on_batch(self, x):
        y = self.targets.pop(0)
        boxes, labels = y["boxes"], y["labels"]
        n = (labels >= 0).sum(axis=1)
        fp = np.tile(np.array([[[40.0, 40.0, 60.0, 60.0]]], np.float32), (len(labels), 1, 1))
        out_boxes = np.concatenate([fp, boxes], axis=1)
        out_labels = np.concatenate([np.zeros((len(labels), 1), np.int64), labels], axis=1)
        scores = np.where(out_labels >= 0, 0.9, 0.0).astype(np.float32)
        scores[:, 0] = 0.95
        if not self.false_positive:
            return {"boxes": boxes, "scores": scores[:, 1:], "labels": labels, "num_detections": n}
        return {"boxes": out_boxes, "scores": scores, "labels": out_labels, "num_detections": n + 1}


def _detection_task(tmp_path, source: str, path: Path, **sets):
    from cnn_apps import tasks

    items = {
        "task": "detection",
        "data.source": source,
        "data.path": str(path),
        "data.data_dir": str(tmp_path / "data"),
        "data.image_size": SIZE,
        "evaluate.batch_size": 3,
        **sets,
    }
    config = load_config(None, [f"{k}={v}" for k, v in items.items()])
    spec = get_source(config).prepare()
    return tasks.for_config(config, spec)


def _pycocotools(annotation_file, detections: list, image_ids) -> np.ndarray:
    """COCOeval.stats of ``detections`` against an annotation file, -1 made NaN."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        ev = COCOeval(gt, gt.loadRes(json.loads(json.dumps(detections))), "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.where(ev.stats == -1, np.nan, ev.stats)


def test_coco_at_the_source_resolution_is_pycocotools_on_the_original_file(tmp_path):
    """Detections found at the model's 64 px come back in each original image's pixels (equal to
    the annotation file's boxes), with the file's image and category ids; the COCO numbers are
    pycocotools' on the original file (its own ``area`` values and crowd regions), and a
    detection on a crowd region costs nothing while a false positive does."""
    from cnn_apps.tasks.detection import collect, score_test_detections

    path = _coco_fixture(tmp_path)
    task = _detection_task(
        tmp_path,
        "coco",
        path,
        **{"data.image_dir": str(tmp_path / "imgs"), "data.test_fraction": 0.5, "data.val_fraction": 0.1},
    )
    ds = task.test_dataset(keep_source=True)
    truth, dets, _ = collect(Oracle(ds), ds)
    result, files = score_test_detections(task, truth, dets, task.class_names)

    coco = json.loads(path.read_text())
    test_ids = [r["image_id"] for r in get_source(task.config).records(task.spec, "test")]
    assert len(test_ids) == 4 and "ground_truth.json" not in files  # scored against the original file
    # every truth box came back at the source resolution with its ids (the false positives aside)
    found = {
        (d["image_id"], d["category_id"], tuple(np.round(d["bbox"], 2))) for d in files["detections.json"]
    }
    for ann in coco["annotations"]:
        if ann["image_id"] in test_ids:
            w, h = COCO_SIZES[ann["image_id"] - 100]
            x, y, bw, bh = ann["bbox"]
            clipped = [x, y, min(x + bw, w) - x, min(y + bh, h) - y]
            assert (ann["image_id"], ann["category_id"], tuple(np.round(clipped, 2))) in found, ann

    expected = _pycocotools(path, files["detections.json"], test_ids)
    np.testing.assert_allclose(result.coco_stats, expected, rtol=0, atol=1e-12)
    assert result.coco_source == "pycocotools"
    assert 0.3 < result.coco_ap < 1.0  # the false positives cost; the crowd detections do not
    assert result.map50 == pytest.approx(expected[1], abs=0.2)  # VOC rules: same order of magnitude

    # at the model's resolution the boxes shrink: COCO's size buckets see other objects
    model = _detection_task(
        tmp_path,
        "coco",
        path,
        **{
            "data.image_dir": str(tmp_path / "imgs"),
            "data.test_fraction": 0.5,
            "data.val_fraction": 0.1,
            "evaluate.resolution": "model",
        },
    )
    ds = model.test_dataset(keep_source=True)
    truth, dets, _ = collect(Oracle(ds), ds)
    at_model, model_files = score_test_detections(model, truth, dets, model.class_names)
    assert "ground_truth.json" in model_files
    assert at_model.coco_ap_large != pytest.approx(result.coco_ap_large, abs=1e-6) or np.isnan(
        at_model.coco_ap_large
    )


def _voc_fixture(root: Path) -> None:
    """Three images of several sizes; each has a cat, a dog and a difficult dog."""
    (root / "Annotations").mkdir(parents=True)
    for k, (w, h) in enumerate([(120, 90), (80, 140), (200, 100)]):
        _noise(root / "JPEGImages" / f"{k:06d}.png", w, h, k)
        objects = [("cat", 5, 6, 40, 50, 0), ("dog", 50, 20, 78, 80, 0), ("dog", 10, 60, 30, 85, 1)]
        xml = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
            f"<xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>"
            for n, a, b, c, e, d in objects
        )
        (root / "Annotations" / f"{k:06d}.xml").write_text(
            f"<annotation><filename>{k:06d}.png</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{xml}</annotation>"
        )
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("000000\n")
    (main / "val.txt").write_text("000001\n")
    (main / "test.txt").write_text("000000\n000001\n000002\n")


def test_voc_difficult_objects_are_ignored_as_the_devkit_does(tmp_path):
    """A detection on a difficult object is neither a true nor a false positive (the devkit's
    rule), so finding every object scores AP 1; dropping the difficult object from the truth (as
    the pipeline did before) would make that detection a false positive. Training targets leave
    difficult objects out; ``data.keep_difficult`` makes them ordinary targets."""
    from cnn_apps.detection.evaluation import evaluate_detections
    from cnn_apps.tasks.detection import at_resolution, collect, score_test_detections

    _voc_fixture(tmp_path / "voc")
    task = _detection_task(tmp_path, "voc", tmp_path / "voc")
    ds = task.test_dataset(keep_source=True)

    truth, dets, _ = collect(Oracle(ds, false_positive=False), ds)
    result, files = score_test_detections(task, truth, dets, task.class_names)
    assert result.map50 == 1.0 and result.map50_voc07 == pytest.approx(1.0)
    assert {r["class"]: r["num_gt"] for r in result.per_class} == {
        "cat": 3,
        "dog": 3,
    }  # difficult not counted
    gt = files["ground_truth.json"]  # made at the source resolution: the original sizes
    assert [(im["width"], im["height"]) for im in gt["images"]] == [(120, 90), (80, 140), (200, 100)]
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 3
    assert result.coco_ap50 == 1.0

    source_truth, source_dets = at_resolution(truth, dets, "source")
    dropped = [{k: t[k][~t["iscrowd"]] for k in ("boxes", "labels")} for t in source_truth]
    assert evaluate_detections(dropped, source_dets, 2, ["cat", "dog"]).map50 < 1.0

    x, y = next(iter(task.dataset("test", training=False)))  # training targets: no difficult object
    assert (np.asarray(y["labels"]) >= 0).sum(axis=1).tolist() == [2, 2, 2]
    keep = _detection_task(tmp_path, "voc", tmp_path / "voc", **{"data.keep_difficult": True})
    x, y = next(iter(keep.dataset("test", training=False)))
    assert (np.asarray(y["labels"]) >= 0).sum(axis=1).tolist() == [3, 3, 3]


@pytest.mark.slow
def test_cnn_apps_evaluate_reports_what_pycocotools_reports_on_its_detections_json(tmp_path, monkeypatch):
    """``cnn-apps all`` on a COCO file with crowd regions and images of several sizes: the
    logged ``test_coco_*`` are exactly what pycocotools reports for the logged
    ``detections.json`` against the original annotation file, over the test split's images."""
    import mlflow

    from cnn_apps.cli import main
    from cnn_apps.data.sources import read_manifest

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    path = _coco_fixture(tmp_path)
    sets = tiny_overrides(
        tmp_path,
        **{
            "task": "detection",
            "data.source": "coco",
            "data.path": str(path),
            "data.image_dir": str(tmp_path / "imgs"),
            "data.image_size": SIZE,
            "data.test_fraction": 0.5,
            "data.val_fraction": 0.1,
            "training.epochs": 1,
            "detection.score_threshold": 0.001,
        },
    )
    config = ROOT / "pipelines" / "configs" / "shapes_ssd.yaml"
    tiny = [
        "model.backbone_args={stage_filters: [8, 16, 16, 32]}",
        "model.architecture_args={feature_levels: [C3, C4], extra_blocks: [32], s_min: 0.15, s_max: 0.6}",
    ]
    assert main(["all", "--config", str(config), *set_args(sets + tiny)]) == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = {
        r.data.tags["stage"]: r
        for r in client.search_runs([client.get_experiment_by_name("detection").experiment_id])
    }
    evaluate = runs["evaluate"]
    assert evaluate.data.params["evaluate.resolution"] == "source"
    detections = json.loads(
        Path(client.download_artifacts(evaluate.info.run_id, "detections.json", str(tmp_path))).read_text()
    )
    assert detections and {d["category_id"] for d in detections} <= {3, 18}
    spec = json.loads(
        Path(
            client.download_artifacts(runs["prepare"].info.run_id, "dataset.json", str(tmp_path))
        ).read_text()
    )
    test_ids = [r["image_id"] for r in read_manifest(spec["location"])["splits"]["test"]]
    expected = dict(
        zip(
            ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
            + ("ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large"),
            _pycocotools(path, detections, test_ids),
        )
    )
    for name, value in expected.items():
        logged = evaluate.data.metrics[f"test_coco_{name}"]
        assert (np.isnan(value) and np.isnan(logged)) or logged == pytest.approx(value, abs=1e-12), name


def _mask_fixture(root: Path) -> list:
    """Nine images of several sizes with id masks (0 background, 1 square, 2 bar, 255 border)."""
    sizes = [(40, 30), (64, 48), (50, 70), (33, 45), (80, 60), (48, 48), (70, 35), (36, 52), (60, 90)]
    for k, (w, h) in enumerate(sizes):
        _noise(root / "images" / f"im{k}.png", w, h, k)
        ids = np.zeros((h, w), np.uint8)
        ids[h // 4 : h // 2, w // 5 : w // 2] = 1
        ids[2 * h // 3 :, w // 3 :] = 2
        ids[0, :] = 255
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids).save(root / "masks" / f"im{k}.png")
    (root / "classes.txt").write_text("square\nbar\n")
    return sizes


@pytest.mark.slow
def test_segmentation_miou_at_the_source_resolution_equals_a_numpy_confusion_matrix(tmp_path, monkeypatch):
    """``cnn-apps all`` on masks of several sizes: the logged ``test_miou`` equals the mIoU of a
    NumPy confusion matrix between the original mask files (read with PIL) and the trained
    model's class scores resized to each mask's size (the standard protocol)."""
    import mlflow
    import tensorflow as tf

    from cnn_apps import tasks, tracking
    from cnn_apps.cli import main
    from cnn_apps.data.sources import read_manifest

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    _mask_fixture(tmp_path / "seg")
    sets = tiny_overrides(
        tmp_path,
        **{
            "data.source": "masks",
            "data.path": str(tmp_path / "seg"),
            "data.image_size": 32,
            "data.test_fraction": 0.34,
            "data.val_fraction": 0.12,
            "training.epochs": 1,
        },
    )
    config = ROOT / "pipelines" / "configs" / "shapes_fcn8s.yaml"
    tiny = ["model.backbone_args={width: 0.0625}", "model.architecture_args={fc_filters: 16, fc_kernel: 1}"]
    assert main(["all", "--config", str(config), *set_args(sets + tiny)]) == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = {
        r.data.tags["stage"]: r
        for r in client.search_runs([client.get_experiment_by_name("segmentation").experiment_id])
    }
    logged = runs["evaluate"].data.metrics["test_miou"]

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    spec = tracking.load_dataset_spec(runs["prepare"].info.run_id)
    model = tasks.for_run(load_config(config, sets + tiny), spec, runs["train"]).load(
        runs["train"].info.run_id
    )
    k = 3
    confusion = np.zeros((k, k), np.int64)
    for record in read_manifest(spec.location)["splits"]["test"]:
        name = Path(record["path"]).stem
        image = np.asarray(Image.open(tmp_path / "seg" / "images" / f"{name}.png").convert("RGB"))
        truth = np.asarray(Image.open(tmp_path / "seg" / "masks" / f"{name}.png")).astype(np.int64)
        small = tf.saturate_cast(tf.round(tf.image.resize(image, (32, 32), antialias=True)), tf.uint8)
        scores = model.predict_on_batch(tf.cast(small, tf.float32)[None])[0]
        pred = np.argmax(tf.image.resize(scores, truth.shape, method="bilinear").numpy(), axis=-1)
        keep = truth != 255
        confusion += np.bincount(truth[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    expected = float(np.mean(inter[union > 0] / union[union > 0]))
    assert logged == pytest.approx(expected, abs=1e-9)
