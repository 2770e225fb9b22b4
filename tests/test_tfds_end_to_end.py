"""The TFDS source offline, on TFDS' own fake examples (``tfds.testing.mock_data``: random
examples of the real feature schema, nothing downloaded): voc/2007 and coco/2017 detection and
oxford_iiit_pet segmentation through the CLI (prepare -> train -> evaluate -> export), and the
``ignore`` flag of VOC difficult and COCO crowd objects on hand-made examples.

``MockPolicy.USE_CODE``: the datasets' metadata (``dataset_info.json``, split sizes, COCO's
class names) is not installed with TFDS, so the builders' code gives the schema; the splits
are then unknown and every split is the same fake examples."""

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_DENSE, set_args, tiny_overrides

from cnn_apps.cli import main
from cnn_apps.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pipelines" / "configs"
STAGES = {"prepare", "train", "evaluate", "export"}

VOC_CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike "
    "person pottedplant sheep sofa train tvmonitor"
).split()


def _mock(num_examples: int, **kwargs):
    import tensorflow_datasets as tfds

    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE, **kwargs
    )


def _run_all(
    tmp_path, monkeypatch, config_args: list, sets: list, experiment: str, num_examples: int
) -> dict:
    """`cnn-apps all` inside mock_data; {stage: MLflow run}, every stage FINISHED."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with _mock(num_examples, max_value=4):  # pixel and trimap values 0..3 (pet: all 3 classes)
        rc = main(["all", *config_args, *set_args(sets)])
    assert rc == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = {
        r.data.tags["stage"]: r
        for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    }
    assert set(runs) == STAGES
    assert {stage: r.info.status for stage, r in runs.items()} == dict.fromkeys(STAGES, "FINISHED")
    assert Path(runs["export"].data.tags["export_path"]).is_dir()
    return runs


def _logged_spec(run):
    """The DatasetSpec the prepare run logged (``dataset.json``)."""
    import mlflow

    from cnn_apps.data.spec import DatasetSpec

    return DatasetSpec.from_json(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/dataset.json"))


DETECTORS = {
    "ssd": [
        "--config",
        str(CONFIGS / "shapes_ssd.yaml"),
        *set_args(
            [
                "model.backbone_args={stage_filters: [8, 16, 16, 32]}",
                "model.architecture_args={feature_levels: [C3, C4], extra_blocks: [32], "
                "s_min: 0.15, s_max: 0.6}",
            ]
        ),
    ],
    "yolo": [
        "--config",
        str(CONFIGS / "shapes_yolo.yaml"),
        *set_args(
            [
                "model.backbone_args={stage_filters: [8, 16, 16, 32]}",
                "model.architecture_args={head_filters: 8, hidden_units: 32}",
            ]
        ),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "tfds_name, detector, num_classes, ignore_tally",
    [("voc/2007", "ssd", 20, "difficult_boxes"), ("coco/2017", "yolo", 80, "crowd_annotations")],
)
def test_tfds_detection_end_to_end(tfds_name, detector, num_classes, ignore_tally, tmp_path, monkeypatch):
    sets = tiny_overrides(
        tmp_path,
        **{
            "data.source": "tfds",
            "data.tfds_name": tfds_name,
            "data.image_size": 64,
            "training.epochs": 1,
            "training.batch_size": 4,
            "evaluate.batch_size": 4,
            "detection.score_threshold": 0.01,
        },
    )
    runs = _run_all(tmp_path, monkeypatch, DETECTORS[detector], sets, "detection", num_examples=6)
    prepare, evaluate = runs["prepare"].data, runs["evaluate"].data
    spec = _logged_spec(runs["prepare"])
    # the real schema: VOC's 20 classes by name, COCO's 80 (named by TFDS when it builds the
    # dataset from the annotations: "0".."79" here); 6 fake images in every split
    assert prepare.metrics["num_classes"] == num_classes and len(spec.class_names) == num_classes
    if tfds_name.startswith("voc"):
        assert spec.class_names == VOC_CLASSES
    assert spec.counts == {"train": 6, "validation": 6, "test": 6}
    for split in ("train", "validation", "test"):
        assert prepare.metrics[f"count_{split}"] == 6
        assert prepare.metrics[f"{ignore_tally}_{split}"] > 0  # the fake flags are random
        assert prepare.metrics[f"left_out_boxes_{split}"] > 0  # fake boxes with ymin > ymax
        assert prepare.metrics[f"boxes_{split}"] == sum(spec.class_counts[split].values()) > 0
    for name in ("test_map50", "test_map50_voc07", "test_coco_ap", "test_images_per_s"):
        assert isinstance(evaluate.metrics[name], float) and np.isfinite(evaluate.metrics[name]), name


@pytest.mark.slow
def test_tfds_pet_segmentation_end_to_end(tmp_path, monkeypatch):
    sets = tiny_overrides(
        tmp_path,
        **{
            "data.source": "tfds",
            "data.tfds_name": "oxford_iiit_pet",
            "data.image_size": 32,
            "training.epochs": 1,
            "training.batch_size": 4,
            "evaluate.batch_size": 4,
        },
    )
    # the later --set data.image_size=32 wins over TINY_DENSE's 64
    runs = _run_all(tmp_path, monkeypatch, TINY_DENSE["fcn8s"], sets, "segmentation", num_examples=6)
    prepare, evaluate = runs["prepare"].data, runs["evaluate"].data
    spec = _logged_spec(runs["prepare"])
    assert prepare.metrics["num_classes"] == 1 and spec.class_names == ["pet"]
    assert spec.counts == {"train": 6, "validation": 6, "test": 6}
    # trimap values 0..3 -> background, pet and the ignored border all occur
    assert set(spec.class_counts["train"]) == {"background", "pet"}
    assert min(spec.class_counts["train"].values()) > 0 and spec.extra["ignored_pixels"]["train"] > 0
    for name in ("test_miou", "test_pixel_accuracy", "test_iou_background", "test_images_per_s"):
        assert isinstance(evaluate.metrics[name], float) and np.isfinite(evaluate.metrics[name]), name
    assert 0.0 <= evaluate.metrics["test_miou"] <= 1.0


# ------------------------------------------------------------ the ignore flag, on known examples
def _blank(spec):
    """An empty (0-sized where the shape is unknown) value of a tf.TensorSpec."""
    import tensorflow as tf

    if spec.dtype == tf.string:
        return np.full([d or 0 for d in spec.shape], b"")
    return np.zeros([d or 0 for d in spec.shape], spec.dtype.as_numpy_dtype)


def _fake_as_dataset(examples: list):
    """An ``as_dataset_fn`` for mock_data yielding ``examples`` (their objects filled out
    to the builder's full feature schema) in every split."""
    import tensorflow as tf

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        spec = self.info.features.get_tensor_spec()
        full = []
        for ex in examples:
            n = len(ex["objects"]["label"])
            objects = {
                k: np.asarray(
                    ex["objects"].get(k, np.zeros(n, s.dtype.as_numpy_dtype)), s.dtype.as_numpy_dtype
                )
                for k, s in spec["objects"].items()
            }
            objects["bbox"] = np.asarray(ex["objects"]["bbox"], np.float32).reshape(-1, 4)
            out = {k: _blank(s) for k, s in spec.items() if k != "objects"}
            out.update(image=ex["image"], objects=objects)
            full.append(out)
        return tf.data.Dataset.from_generator(lambda: iter(full), output_signature=spec)

    return as_dataset


def _source(tmp_path, tfds_name: str, *extra):
    from cnn_apps.data.sources.tfds import TfdsSource

    overrides = ["task=detection", "data.source=tfds", f"data.tfds_name={tfds_name}"]
    return TfdsSource(load_config(None, [*overrides, f"data.data_dir={tmp_path}", *extra]))


IMAGE = np.zeros((20, 30, 3), np.uint8)  # h 20, w 30
VOC_EXAMPLES = [
    {
        "image": IMAGE,
        "objects": {  # bird; a difficult person; a box without area (ymax < ymin)
            "bbox": [[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.9], [0.5, 0.5, 0.4, 0.6]],
            "label": [2, 14, 3],
            "is_difficult": [False, True, False],
        },
    },
    {"image": IMAGE, "objects": {"bbox": [[0.0, 0.5, 1.0, 1.0]], "label": [7], "is_difficult": [True]}},
]


@pytest.mark.parametrize("keep_difficult", [False, True])
def test_tfds_voc_difficult_objects_are_flagged_ignore(keep_difficult, tmp_path):
    source = _source(tmp_path, "voc/2007", f"data.keep_difficult={keep_difficult}")
    with _mock(len(VOC_EXAMPLES), as_dataset_fn=_fake_as_dataset(VOC_EXAMPLES)):
        spec = source.prepare()
        elements = list(source.load(spec, "train").as_numpy_iterator())
    assert spec.class_names == VOC_CLASSES
    counts = {c: n for c, n in spec.class_counts["train"].items() if n}
    if keep_difficult:  # ordinary objects then
        assert counts == {"bird": 1, "person": 1, "cat": 1}
        assert spec.extra["difficult_boxes"]["train"] == 0
        assert spec.extra["images_without_objects"]["train"] == 0
    else:  # flagged, kept in the data, counted apart from the classes
        assert counts == {"bird": 1}
        assert spec.extra["difficult_boxes"] == {"train": 2, "validation": 2, "test": 2}
        assert spec.extra["images_without_objects"]["train"] == 1
    assert spec.extra["left_out_boxes"]["train"] == 1  # only the box without area
    first, second = elements
    assert first["image"].shape == (20, 30, 3) and first["image"].dtype == np.uint8
    assert first["boxes"].dtype == np.float32 and first["labels"].dtype == np.int64
    assert first["labels"].tolist() == [2, 14] and second["labels"].tolist() == [7]
    assert first["ignore"].dtype == bool
    assert first["ignore"].tolist() == [False, not keep_difficult]
    assert second["ignore"].tolist() == [not keep_difficult]
    # VOC's 1-based pixels: x1 = xmin * w - 1 (see tfds_boxes_to_xyxy)
    np.testing.assert_allclose(first["boxes"], [[2, 1, 15, 10], [5, 3, 27, 12]], atol=1e-5)


def test_tfds_coco_crowd_objects_are_flagged_ignore(tmp_path):
    examples = [
        {
            "image": IMAGE,
            "objects": {  # a crowd region and an ordinary object; a box without area
                "bbox": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.2, 0.4]],
                "label": [0, 1, 2],
                "is_crowd": [True, False, False],
            },
        }
    ]
    source = _source(tmp_path, "coco/2017")
    with _mock(1, as_dataset_fn=_fake_as_dataset(examples)):
        spec = source.prepare()
        (element,) = source.load(spec, "test").as_numpy_iterator()
    assert len(spec.class_names) == 80
    assert {c: n for c, n in spec.class_counts["test"].items() if n} == {spec.class_names[1]: 1}
    assert spec.extra["crowd_annotations"]["test"] == 1 and spec.extra["left_out_boxes"]["test"] == 1
    assert "difficult_boxes" not in spec.extra
    assert element["labels"].tolist() == [0, 1] and element["ignore"].tolist() == [True, False]
    np.testing.assert_allclose(element["boxes"], [[0, 0, 15, 10], [15, 10, 30, 20]], atol=1e-5)


def test_tfds_mocked_only_inside_mock_data():
    from cnn_apps.data.sources.tfds import tfds_mocked

    assert not tfds_mocked()
    with _mock(1):
        assert tfds_mocked()
    assert not tfds_mocked()


@pytest.mark.parametrize(
    "tfds_name, splits, expected",
    [  # coco's test split has no annotations: test is carved out of train, as without one
        (
            "coco/2017",
            ("train", "validation", "test"),
            {"train": "train[10%:]", "validation": "validation", "test": "train[:10%]"},
        ),
        (
            "voc/2007",
            ("train", "validation", "test"),
            {"train": "train", "validation": "validation", "test": "test"},
        ),
        (
            "voc/2012",
            ("train", "validation", "test"),
            {"train": "train[10%:]", "validation": "validation", "test": "train[:10%]"},
        ),
    ],
)
def test_tfds_detection_splits(tfds_name, splits, expected, tmp_path):
    from types import SimpleNamespace

    source = _source(tmp_path, tfds_name, "data.val_fraction=0.1", "data.test_fraction=0.1")
    builder = SimpleNamespace(info=SimpleNamespace(splits=dict.fromkeys(splits)))
    assert source._split_names(builder) == expected
