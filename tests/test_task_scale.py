"""The train stage's scale features reach the detectors and segmenters, not only classifiers:
``training.distribution: mirrored`` (losses reduced over the global batch, the RPN/RoI
samplers drawing what one device draws), ``training.mixed_precision`` (float32 heads, boxes,
anchors and NMS inputs), and ``train --resume`` after SIGKILL; R-CNN refuses what it cannot
take, saying why. The CPU is split into 2 logical devices, as the classification tests do."""

import os
import signal
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from conftest import TINY_DENSE, set_args, signal_training_after_first_epoch, tiny_overrides

from cnn_apps.cli import main

pytestmark = pytest.mark.slow

MODELS = """
import json, sys
import numpy as np, tensorflow as tf, keras
from cnn_apps.config import TrainingConfig
from cnn_apps.data.shapes import make_scene
from cnn_apps.training import distribute


def data(task, n=16, size=64):
    scenes = [make_scene(0, "train", i, size, task) for i in range(n)]
    images = np.stack([s.image for s in scenes]).astype(np.float32)
    if task == "segmentation":
        masks = np.stack([s.mask for s in scenes])[..., None].astype(np.uint8)
        masks[:4, :8] = 255  # ignored pixels, more on the first replica than on the second
        return images, masks
    boxes, labels = -np.ones((n, 4, 4), np.float32), -np.ones((n, 4), np.int64)
    for i, s in enumerate(scenes):
        boxes[i, : len(s.boxes)], labels[i, : len(s.labels)] = s.boxes, s.labels
    return images, {"boxes": boxes, "labels": labels}


def build(kind):
    if kind == "ssd":
        from cnn_apps.detection.ssd import SSD
        return SSD(4, image_size=64, feature_levels=["C3", "C4"], extra_blocks=[32], s_min=0.15, s_max=0.6,
                   backbone_args={"stage_filters": [8, 16, 16, 32]}), {}
    if kind == "faster_rcnn":
        from cnn_apps.detection.faster_rcnn import FasterRCNN
        model = FasterRCNN(4, image_size=64, backbone_args={"stage_filters": [8, 16, 16, 32]}, rpn_filters=16,
                           head_units=[32], rpn_post_nms_top_k=20, roi_batch_per_image=16,
                           anchor_sizes=[16, 32])
        return model, {}
    from cnn_apps.segmentation.fcn import FCN
    from cnn_apps.segmentation.segmenter import segmentation_loss
    model = FCN(5, variant="8s", image_size=64, backbone_args={"width": 0.0625, "batch_norm": True},
                fc_filters=16, fc_kernel=3, dropout=0.0)
    return model, {"loss": segmentation_loss()}
"""

MIRRORED = (
    MODELS
    + """
distribute.split_cpu(2)
out = {}
for kind in sys.argv[1:]:
    x, y = data("segmentation" if kind == "fcn8s" else "detection")
    for name in ("none", "mirrored"):
        keras.utils.set_random_seed(0)
        with distribute.training_scope(TrainingConfig(distribution=name)) as strategy:
            model, compile_args = build(kind)
            distribute.synchronize_batch_norm(model)
            model.compile(optimizer=keras.optimizers.SGD(0.01), **compile_args)
            history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0)
        out[f"{kind}/{name}"] = {"replicas": strategy.num_replicas_in_sync, **history.history}
json.dump(out, sys.stdout)
"""
)


def _script(script: str, *args) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k != "CNN_APPS_CPU_REPLICAS"}
    out = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_ssd_faster_rcnn_and_fcn8s_on_two_replicas_take_the_single_device_steps():
    """Two replicas with half of every global batch end with one device's losses, every
    component too: SSD's matched boxes, the RPN's and the RoI head's sampled counts and the
    segmenter's counted pixels are summed over the replicas before dividing, and the samplers
    draw the global batch's random numbers."""
    out = _script(MIRRORED, "ssd", "faster_rcnn", "fcn8s")
    for kind in ("ssd", "faster_rcnn", "fcn8s"):
        one, two = out[f"{kind}/none"], out[f"{kind}/mirrored"]
        assert one["replicas"] == 1 and two["replicas"] == 2
        assert set(one) == set(two) and "loss" in one
        for key in sorted(set(one) - {"replicas"}):
            np.testing.assert_allclose(two[key], one[key], rtol=1e-3, atol=1e-5, err_msg=f"{kind} {key}")


PRECISION = (
    MODELS
    + """
out = {}
for kind in sys.argv[1:]:
    x, y = data("segmentation" if kind == "fcn8s" else "detection")
    for policy in ("none", "mixed_bfloat16", "mixed_float16"):
        keras.utils.set_random_seed(0)
        with distribute.training_scope(TrainingConfig(mixed_precision=policy)):
            model, compile_args = build(kind)
            model.compile(optimizer=keras.optimizers.SGD(0.01), **compile_args)
            history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
            outputs = model(x[:2], training=False)
            name = keras.backend.standardize_dtype
            dtypes = {k: name(v.dtype) for k, v in outputs.items()} if isinstance(outputs, dict) else \\
                {"logits": name(outputs.dtype)}
            if kind != "fcn8s":
                detections = model.predict_on_batch(x[:2])
                dtypes.update({f"detect_{k}": name(v.dtype) for k, v in detections.items()})
                dtypes["anchors"] = str(np.asarray(model.anchors).dtype)
        out[f"{kind}/{policy}"] = {"loss": history.history["loss"], "dtypes": dtypes,
                                   "compute": model.dtype_policy.compute_dtype,
                                   "variables": sorted({w.dtype for w in model.weights})}
json.dump(out, sys.stdout)
"""
)


def test_mixed_precision_detector_and_segmenter_stay_near_float32():
    """bfloat16 and float16 compute: the losses stay within 5% of float32's after 3 epochs,
    the variables stay float32, and what the boxes and NMS are made of stays float32: the
    heads' outputs, the anchors and the decoded detections."""
    out = _script(PRECISION, "ssd", "fcn8s")
    for kind in ("ssd", "fcn8s"):
        reference = out[f"{kind}/none"]["loss"]
        for policy in ("mixed_bfloat16", "mixed_float16"):
            run = out[f"{kind}/{policy}"]
            np.testing.assert_allclose(run["loss"], reference, rtol=0.05, err_msg=f"{kind} {policy}")
            assert run["variables"] == ["float32"], (kind, policy)
            assert run["compute"] == policy.removeprefix("mixed_"), (kind, policy)  # it did run in 16 bits
            floats = {k: v for k, v in run["dtypes"].items() if "labels" not in k and "num_" not in k}
            assert set(floats.values()) == {"float32"}, (kind, policy, run["dtypes"])


def _train_cli(folder, kind, env_extra=None, **overrides):
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "CNN_APPS_CPU_REPLICAS")}
    args = [
        "train",
        *set_args(tiny_overrides(folder, **{"training.epochs": 2, **overrides})),
        *TINY_DENSE[kind],
    ]
    out = subprocess.run(
        [sys.executable, "-m", "cnn_apps.cli", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**env, **(env_extra or {})},
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_id = out.stdout.strip().splitlines()[-1].split()[1]
    return mlflow.MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}").get_run(run_id)


def test_mirrored_detector_through_the_cli(tmp_path):
    """`cnn-apps train` of an SSD with training.distribution=mirrored on two CPU replicas ends
    with the single-device run's losses (the training stream's data is the same)."""
    single = _train_cli(tmp_path / "one", "ssd")
    mirrored = _train_cli(
        tmp_path / "two", "ssd", {"CNN_APPS_CPU_REPLICAS": "2"}, **{"training.distribution": "mirrored"}
    )
    assert single.data.metrics["replicas"] == 1 and mirrored.data.metrics["replicas"] == 2
    for key in ("train_loss", "train_box_loss", "train_classification_loss", "val_loss", "best_val_loss"):
        assert mirrored.data.metrics[key] == pytest.approx(single.data.metrics[key], rel=1e-3), key


@pytest.mark.parametrize("kind", ["ssd", "fcn8s"])
def test_a_killed_dense_training_resumes_to_the_uninterrupted_result(kind, tmp_path, capsys, monkeypatch):
    """SIGKILL after the first backed-up epoch, then `train --resume`: the detector's and the
    segmenter's run ends with the uninterrupted run's per-epoch losses and kept weights'
    validation metrics."""
    epochs = 4  # room for an epoch or two to finish between the first backup and the kill
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def sets(folder):
        over = {
            "training.epochs": epochs,
            "data.train_size": 96,
            "training.checkpoint_dir": str(folder / "checkpoints"),
        }
        return [*set_args(tiny_overrides(folder, **over)), *TINY_DENSE[kind]]

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for folder in (reference, killed):
        folder.mkdir()
    monkeypatch.chdir(reference)
    assert main(["train", *sets(reference)]) == 0
    expected = capsys.readouterr().out.strip().splitlines()[-1].split()[1]
    run_id, _, _ = signal_training_after_first_epoch(killed, sets(killed), signal.SIGKILL)
    client = mlflow.MlflowClient(f"sqlite:///{killed / 'mlruns' / 'mlflow.db'}")
    done = len(client.get_metric_history(run_id, "val_loss"))
    assert 1 <= done < epochs
    monkeypatch.chdir(killed)
    resume_sets = sets(killed)
    at = resume_sets.index("--config")  # --resume takes the run's own config (the --sets still apply)
    assert main(["train", "--resume", run_id, *resume_sets[:at], *resume_sets[at + 2 :]]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].split()[1] == run_id
    ref_client = mlflow.MlflowClient(f"sqlite:///{reference / 'mlruns' / 'mlflow.db'}")
    want = {m.step: m.value for m in ref_client.get_metric_history(expected, "val_loss")}
    got = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}
    assert sorted(got) == list(range(epochs))
    np.testing.assert_allclose([got[e] for e in range(epochs)], [want[e] for e in range(epochs)], rtol=1e-4)
    resumed, uninterrupted = client.get_run(run_id), ref_client.get_run(expected)
    assert resumed.info.status == "FINISHED"
    keys = ["best_val_loss", "best_epoch", "val_map50" if kind == "ssd" else "best_val_miou"]
    for key in keys:
        assert resumed.data.metrics[key] == pytest.approx(
            uninterrupted.data.metrics[key], rel=1e-4, abs=1e-6
        ), key


def test_rcnn_refuses_a_distribution_strategy_saying_why(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    config = os.path.join(os.path.dirname(__file__), "..", "pipelines", "configs", "shapes_rcnn.yaml")
    sets = set_args(tiny_overrides(tmp_path, **{"training.distribution": "mirrored"}))
    assert main(["train", "--config", config, *sets]) == 2
    err = capsys.readouterr().err
    assert "cannot train with training.distribution" in err and "scikit-learn" in err


def test_learning_curve_study_of_a_detector(tmp_path, capsys, monkeypatch):
    """The learning-curve study trains an SSD on 16 and 48 images as nested runs; its table
    holds 1 - mAP50 on the training images and on the validation split, and the kept
    weights' validation mAP50."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    sets = set_args(tiny_overrides(tmp_path, **{"training.epochs": 1, "study.train_sizes": "[16,48]"}))
    assert main(["study", "learning-curve", *sets, *TINY_DENSE["ssd"]]) == 0
    parent_id = capsys.readouterr().out.strip().splitlines()[-1].split()[1]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    parent = client.get_run(parent_id)
    kids = client.search_runs([parent.info.experiment_id], filter_string=f"tags.study_run = '{parent_id}'")
    assert {k.data.tags["setting"]: k.data.metrics["train_examples"] for k in kids} == {"16": 16, "48": 48}
    for kid in kids:
        assert 0.0 <= kid.data.metrics["final_train_error"] <= 1.0 and "diagnosis" in kid.data.tags
        assert kid.data.metrics["final_val_error"] == pytest.approx(
            1.0 - kid.data.metrics["val_map50"], abs=1e-6
        )
    table = mlflow.artifacts.load_text(f"runs:/{parent_id}/results.csv").splitlines()
    assert table[0].split(",")[:7] == [
        "setting",
        "train_error",
        "val_error",
        "bias",
        "variance",
        "verdict",
        "val_map50",
    ]
    assert len(table) == 3


def test_a_study_a_task_does_not_define_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["study", "regularization", *set_args(tiny_overrides(tmp_path)), *TINY_DENSE["ssd"]]) == 2
    err = capsys.readouterr().err
    assert "study regularization is not defined for task 'detection'" in err and "learning-curve" in err
