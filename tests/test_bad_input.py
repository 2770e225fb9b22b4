"""Bad input: one test (or parametrized case) per row of the "Bad input" table in docs/data.md.

Every row goes through the real entry point: ``cnn-apps prepare`` (``cli.main``) on a
folder, VOC, COCO or masks source, ``cnn-apps predict``, config loading, and
``evaluate`` / ``export --from-run``. A bad record is skipped, counted in the prepare
run's ``skipped_records`` metric and named with its reason in ``skipped_records.csv``;
a bad file the whole dataset hangs on (a COCO JSON, a config, a run id) is an
``error: ...`` line naming it, exit code 2, no traceback. No good record is lost.
"""

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import set_args, tiny_overrides
from PIL import Image

from cnn_apps.cli import main
from cnn_apps.config import load_config
from cnn_apps.errors import ConfigError, DataError


# ---------------------------------------------------------------------- helpers
def _cli(*argv) -> tuple[int, str, str]:
    """``cnn-apps ARGV``: (exit code, stdout, stderr), with MLFLOW_TRACKING_URI unset ("") so the
    call's own tracking.uri is the store."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("MLFLOW_TRACKING_URI", "")
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse: a usage error
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def _run_id(stdout: str) -> str:
    return re.search(r"^run_id: (\w+)$", stdout, re.M).group(1)


class Prepared:
    """A prepare run through the CLI and what it logged."""

    def __init__(self, tmp: Path, store: Path, **sets):
        self.tmp = tmp
        self.overrides = _overrides(tmp, store, **sets)
        self.rc, self.out, self.err = _cli("prepare", *set_args(self.overrides))
        assert self.rc == 0, self.err
        self.run_id = _run_id(self.out)
        import mlflow

        client = mlflow.MlflowClient(self.uri)
        self.run = client.get_run(self.run_id)
        self.metrics = self.run.data.metrics
        self.spec = json.loads(mlflow.artifacts.load_text(f"{self.run.info.artifact_uri}/dataset.json"))
        rows = []
        if self.metrics["skipped_records"]:
            text = mlflow.artifacts.load_text(f"{self.run.info.artifact_uri}/skipped_records.csv")
            rows = list(csv.DictReader(io.StringIO(text)))
        self.skipped = rows

    @property
    def uri(self) -> str:
        return next(o.split("=", 1)[1] for o in self.overrides if o.startswith("tracking.uri="))

    def reasons(self, name: str) -> list[str]:
        """The reasons given for the records of file ``name`` (a base name)."""
        return [r["reason"] for r in self.skipped if Path(r["file"]).name == name]

    def config(self):
        return load_config(None, self.overrides)


@pytest.fixture(scope="module")
def env():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", "")  # "" is unset for cnn-apps; restored afterwards
        yield mp


@pytest.fixture(scope="module")
def store(tmp_path_factory, env) -> Path:
    """One MLflow store for the module: a new SQLite store costs seconds of migrations."""
    return tmp_path_factory.mktemp("mlruns")


def _overrides(tmp: Path, store: Path, **sets) -> list[str]:
    return tiny_overrides(tmp, **{"tracking.uri": f"sqlite:///{store / 'mlflow.db'}", **sets})


def _rgb(h, w, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def _half(path: Path, source: Path):
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------- image files (folder source)
# name -> what the reason says; every one is a record skipped, named and counted
BAD_IMAGES = {
    "corrupt.jpg": "cannot be decoded",
    "corrupt.png": "cannot be decoded",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "empty.jpg": "empty file (0 bytes)",
    "onebit.bmp": "TensorFlow cannot decode this BMP",
    "notes.txt": "not an image file",
}
# name -> (H, W): all kept and read as (H, W, 3) uint8 (or (H, W, 1) with data.channels=1)
CONVERTED = {
    "gray.png": (20, 30),
    "rgba.png": (24, 36),
    "gray16.png": (22, 18),
    "rgb16.png": (26, 20),
    "palette.png": (20, 20),
    "gray.jpg": (18, 24),
    "rgb.bmp": (16, 20),
    "anim.gif": (12, 14),
}
TINY = {"one.png": (1, 1), "three_by_five.png": (3, 5)}  # smaller than any model's stride


def _image_folder(root: Path) -> int:
    """Class folders ``a/`` and ``b/`` with plain, converted, tiny and bad files; returns the
    number of good files."""
    good = 0
    for c, cls in enumerate(("a", "b")):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(_rgb(20, 24, 10 * c + i)).save(d / f"plain{i}.png")
            good += 1
    a = root / "a"
    rng = np.random.default_rng(1)
    Image.fromarray(_rgb(20, 30)[..., 0]).save(a / "gray.png")
    cv2.imwrite(str(a / "rgba.png"), rng.integers(0, 256, (24, 36, 4)).astype(np.uint8))
    Image.fromarray(rng.integers(0, 65536, (22, 18)).astype(np.uint16)).save(a / "gray16.png")
    assert Image.open(a / "gray16.png").mode == "I;16"
    cv2.imwrite(str(a / "rgb16.png"), rng.integers(0, 65536, (26, 20, 3)).astype(np.uint16))
    Image.fromarray(_rgb(20, 20)).convert("P").save(a / "palette.png")
    Image.fromarray(_rgb(18, 24)[..., 0]).save(a / "gray.jpg")
    Image.fromarray(_rgb(16, 20)).save(a / "rgb.bmp")
    frames = [Image.fromarray(_rgb(12, 14, s)) for s in range(2)]
    frames[0].save(a / "anim.gif", save_all=True, append_images=frames[1:])
    for name, (h, w) in TINY.items():
        Image.fromarray(_rgb(h, w)).save(root / "b" / name)
    good += len(CONVERTED) + len(TINY)
    b = root / "b"
    Image.fromarray(_rgb(20, 24)).save(b / "ok.jpg", quality=90)
    good += 1
    (b / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (b / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    _half(b / "truncated.jpg", b / "ok.jpg")
    _half(b / "truncated.png", b / "plain0.png")
    (b / "empty.jpg").write_bytes(b"")
    Image.fromarray(_rgb(16, 16)[..., 0] > 128).save(b / "onebit.bmp")  # PIL reads it, TensorFlow does not
    (b / "notes.txt").write_text("not an image\n")
    return good


@pytest.fixture(scope="module")
def folder(tmp_path_factory, store):
    tmp = tmp_path_factory.mktemp("folder")
    good = _image_folder(tmp / "photos")
    run = Prepared(
        tmp,
        store,
        **{
            "data.source": "folder",
            "data.path": tmp / "photos",
            "data.val_fraction": 0.2,
            "data.test_fraction": 0.2,
        },
    )
    run.good = good
    return run


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_bad_image_file_is_skipped_named_and_counted(folder, name):
    """corrupt / truncated JPEG and PNG, zero-byte file, a BMP TensorFlow cannot read, not an image."""
    (reason,) = folder.reasons(name)
    assert BAD_IMAGES[name] in reason
    assert folder.metrics["skipped_records"] == len(BAD_IMAGES)


def test_no_good_image_is_lost(folder):
    assert sum(folder.spec["counts"].values()) == folder.good
    assert sum(folder.metrics[f"count_{s}"] for s in folder.spec["counts"]) == folder.good


def _split_images(run, channels=None):
    from cnn_apps.data.sources import get_source
    from cnn_apps.data.spec import DatasetSpec
    from cnn_apps.tasks.inputs import source_config

    spec = DatasetSpec(**run.spec)
    source = get_source(source_config(run.config()))
    with open(spec.location, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for split in spec.counts:
        paths = [Path(r["path"]).name for r in rows if r["split"] == split]
        for name, ex in zip(paths, source.load(spec, split)):
            out[name] = ex["image"].numpy()
    return out


@pytest.mark.parametrize("name", CONVERTED)
def test_grey_rgba_16bit_palette_bmp_gif_images_are_converted(folder, name):
    images = _split_images(folder)
    h, w = CONVERTED[name]
    assert images[name].shape == (h, w, 3) and images[name].dtype == np.uint8
    if name == "gray16.png":  # 16 bits scaled to 8, not clipped
        want = np.round(np.asarray(Image.open(folder.tmp / "photos" / "a" / name), np.float64) / 257)
        np.testing.assert_allclose(images[name][..., 0], want, atol=1)


def test_data_channels_1_reads_every_format(tmp_path, store):
    """data.channels=1: TensorFlow's BMP and GIF decoders give no grey; they are made grey."""
    _image_folder(tmp_path / "photos")
    run = Prepared(
        tmp_path, store, **{"data.source": "folder", "data.path": tmp_path / "photos", "data.channels": 1}
    )
    images = _split_images(run)
    for name, (h, w) in {**CONVERTED, **TINY}.items():
        assert images[name].shape == (h, w, 1), name
    bmp = np.asarray(Image.open(tmp_path / "photos" / "a" / "rgb.bmp").convert("L"), np.int32)
    assert np.abs(images["rgb.bmp"][..., 0].astype(np.int32) - bmp).max() <= 1


def test_image_smaller_than_the_stride_trains(folder):
    """1x1 and 3x5 images are resized to data.image_size like any other."""
    from cnn_apps.data.pipeline import make_pipeline
    from cnn_apps.data.sources import get_source
    from cnn_apps.data.spec import DatasetSpec
    from cnn_apps.tasks.inputs import source_config

    spec = DatasetSpec(**folder.spec)
    source = get_source(source_config(folder.config()))
    seen = 0
    for split in spec.counts:
        ds = make_pipeline(
            source.load(spec, split),
            task="classification",
            image_size=32,
            batch_size=64,
            training=split == "train",
            augment=folder.config().augment,
            seed=0,
            num_examples=spec.counts[split],
        )
        for images, labels in ds:
            assert images.shape[1:] == (32, 32, 3) and np.isfinite(images.numpy()).all()
            seen += len(labels)
    assert seen == folder.good
    names = set(_split_images(folder))
    assert set(TINY) <= names


# ---------------------------------------------------------------------- VOC XML
def _jpg(path: Path, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(h, w)).save(path, quality=90)


def _voc_xml(root: Path, stem: str, *objects, size=(40, 30)):
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    (root / "Annotations" / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"</size>{objs}</annotation>"
    )


# stem -> (objects, the file named, what its reason says); ``None`` objects: written below
VOC_ROWS = {
    "x2_before_x1": ([("cat", 20, 5, 10, 15)], "x2_before_x1.xml", "x2 <= x1"),
    "outside": ([("cat", 60, 40, 70, 50)], "outside.xml", "box outside the 40x30 image"),
    "nan": ([("cat", "nan", 5, 10, 15)], "nan.xml", "non-finite coordinate"),
    "zero_area": ([("cat", 5, 5, 4, 15)], "zero_area.xml", "empty box"),
    "not_a_number": ([("cat", "ten", 5, 10, 15)], "not_a_number.xml", "<xmin> 'ten' is not a number"),
    "empty_xml": (None, "empty_xml.xml", "empty file (0 bytes)"),
    "malformed_xml": (None, "malformed_xml.xml", "not valid XML"),
    "not_voc": (None, "not_voc.xml", "root element is <foo>, not <annotation>"),
    "image_missing": (
        [("cat", 1, 1, 5, 5)],
        "image_missing.jpg",
        "image file not found (annotation image_missing.xml)",
    ),
    "image_truncated": ([("cat", 1, 1, 5, 5)], "image_truncated.jpg", "truncated"),
}


@pytest.fixture(scope="module")
def voc(tmp_path_factory, store):
    tmp = tmp_path_factory.mktemp("voc")
    root = tmp / "myvoc"
    for i in range(4):  # good images, one partly outside (clipped, kept)
        _jpg(root / "JPEGImages" / f"good{i}.jpg")
        _voc_xml(root, f"good{i}", ("cat", 2, 2, 12, 12), ("dog", 30, 10, 50 if i == 0 else 35, 25))
    for stem, (objects, _, _) in VOC_ROWS.items():
        if stem != "image_missing":
            _jpg(root / "JPEGImages" / f"{stem}.jpg")
        if objects is not None:
            _voc_xml(root, stem, ("dog", 2, 2, 12, 12), *objects)  # a good box beside the bad one
    (root / "Annotations" / "empty_xml.xml").write_bytes(b"")
    (root / "Annotations" / "malformed_xml.xml").write_text("<annotation><size><width>40")
    (root / "Annotations" / "not_voc.xml").write_text("<foo/>")
    _half(root / "JPEGImages" / "image_truncated.jpg", root / "JPEGImages" / "good1.jpg")
    run = Prepared(
        tmp,
        store,
        task="detection",
        **{
            "data.source": "voc",
            "data.path": root,
            "data.val_fraction": 0,
            "data.test_fraction": 0,
            "model.architecture": "ssd",
        },
    )
    return run


@pytest.mark.parametrize("stem", VOC_ROWS)
def test_voc_bad_record_is_skipped_named_and_counted(voc, stem):
    _, name, text = VOC_ROWS[stem]
    (reason,) = voc.reasons(name)
    assert text in reason
    assert voc.metrics["skipped_records"] == len(VOC_ROWS)


def test_voc_keeps_every_good_box_and_clips_boxes_partly_outside(voc):
    # 4 good images + 5 with one bad box beside a good one; 5 whole-file rows are skipped
    assert voc.spec["counts"] == {"train": 9}
    assert voc.metrics["boxes_train"] == 4 * 2 + 5
    from cnn_apps.data.sources import read_manifest

    good0 = next(
        r for r in read_manifest(voc.spec["location"])["splits"]["train"] if r["path"].endswith("good0.jpg")
    )
    assert good0["boxes"][1] == [29.0, 9.0, 40.0, 25.0]  # xmax 50 clipped to the 40 px image


# ---------------------------------------------------------------------- COCO JSON
COCO_ROWS = {  # annotation id -> (bbox or a whole annotation, the reason's text)
    2: ([20, 5, -10, 10], "empty box"),
    3: ([60, 40, 5, 5], "box outside the 40x30 image"),
    4: ([float("nan"), 5, 10, 10], "non-finite coordinate"),
    5: ([5, 5, 0, 10], "empty box"),
    6: (["5", 5, 10, 10], "is not [x, y, w, h] numbers"),
    7: (
        {"id": 7, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},
        "category_id 99 is not in categories",
    ),
    8: ({"id": 8, "image_id": 404, "category_id": 1, "bbox": [1, 1, 5, 5]}, "image_id 404 is not in images"),
}


@pytest.fixture(scope="module")
def coco(tmp_path_factory, store):
    tmp = tmp_path_factory.mktemp("coco")
    images = [{"id": i, "file_name": f"im{i}.jpg", "width": 40, "height": 30} for i in (1, 2, 3)]
    for i in (1, 2, 3):
        _jpg(tmp / f"im{i}.jpg")
    images += [
        {"id": 4, "file_name": "missing.jpg"},
        {"id": 5, "file_name": "broken.jpg"},
        {"id": 1, "file_name": "im1.jpg"},
        "im9.jpg",
    ]
    (tmp / "broken.jpg").write_bytes(b"")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
        {"id": 9, "image_id": 2, "category_id": 2, "bbox": [30, 20, 20, 20]},
    ]  # partly outside: clipped
    for ann_id, (bbox, _) in COCO_ROWS.items():
        anns.append(
            bbox if isinstance(bbox, dict) else {"id": ann_id, "image_id": 3, "category_id": 1, "bbox": bbox}
        )
    anns.append({"id": 10, "image_id": 4, "category_id": 1, "bbox": [1, 1, 5, 5]})  # its image is missing
    path = tmp / "instances.json"
    path.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            }
        )
    )
    run = Prepared(
        tmp,
        store,
        task="detection",
        **{
            "data.source": "coco",
            "data.path": path,
            "data.val_fraction": 0,
            "data.test_fraction": 0,
            "model.architecture": "ssd",
        },
    )
    return run


@pytest.mark.parametrize("ann_id", COCO_ROWS)
def test_coco_bad_annotation_is_skipped_named_and_counted(coco, ann_id):
    reasons = [r["reason"] for r in coco.skipped if r["reason"].startswith(f"annotation {ann_id}:")]
    assert len(reasons) == 1 and COCO_ROWS[ann_id][1] in reasons[0]


@pytest.mark.parametrize(
    "file, text",
    [
        ("missing.jpg", "image file not found (image id 4)"),
        ("broken.jpg", "empty file (0 bytes) (image id 5)"),
        ("instances.json", "images[5] (id 1): id 1 appears again"),
        ("instances.json", "images[6]: is a str, not an object"),
    ],
)
def test_coco_bad_image_entry_is_skipped_named_and_counted(coco, file, text):
    assert any(text in reason for reason in coco.reasons(file)), coco.skipped


def test_coco_keeps_every_good_image_and_box(coco):
    assert coco.spec["counts"] == {"train": 3}
    assert coco.metrics["boxes_train"] == 2
    assert (
        coco.metrics["skipped_records"] == len(COCO_ROWS) + 4
    )  # the annotation of a missing image is not counted twice


@pytest.mark.parametrize(
    "text, error",
    [
        ("", "empty file (0 bytes)"),
        ('{"images": [', "not valid JSON"),
        ("[]", "the top level is a list"),
        ('{"images": [], "annotations": []}', "no categories list"),
        ('{"images": [], "annotations": [], "categories": [{"name": "cat"}]}', "categories[0] has id None"),
    ],
)
def test_empty_or_malformed_coco_json_is_an_error_naming_the_file(tmp_path, store, text, error):
    path = tmp_path / "instances.json"
    path.write_text(text)
    rc, _, err = _cli(
        "prepare",
        *set_args(
            _overrides(
                tmp_path,
                store,
                task="detection",
                **{"data.source": "coco", "data.path": path, "model.architecture": "ssd"},
            )
        ),
    )
    assert rc == 2 and err.startswith(f"error: {path}: ") and error in err and "Traceback" not in err


def test_every_record_bad_is_an_error_naming_the_first_ones(tmp_path, store):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"")
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [],
                "categories": [{"id": 1, "name": "cat"}],
            }
        )
    )
    rc, _, err = _cli(
        "prepare",
        *set_args(
            _overrides(
                tmp_path,
                store,
                task="detection",
                **{"data.source": "coco", "data.path": path, "data.image_dir": tmp_path / "imgs"},
            )
        ),
    )
    assert rc == 2 and "no usable training images; 1 records skipped" in err and "a.jpg (empty file" in err


# ---------------------------------------------------------------------- masks
MASK_ROWS = {  # the file named -> the reason's text
    "unknown_id.png": "mask value 3 is above the 2 classes of classes.txt",
    "wrong_size.png": "mask is 18x20, its image wrong_size.png is 20x20",
    "colour.png": "unknown colour",
    "broken_mask.png": "mask cannot be decoded",
    "no_image.png": "no image named no_image in images/",
    "no_mask.png": "mask not found (expected masks/no_mask.png)",
    "bad_image.jpg": "truncated",
}


@pytest.fixture(scope="module")
def masks(tmp_path_factory, store):
    tmp = tmp_path_factory.mktemp("masks")
    root = tmp / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()

    def image(name, w=20, h=20):
        Image.fromarray(_rgb(h, w)).save(root / "images" / name)

    def mask(name, ids):
        Image.fromarray(ids.astype(np.uint8)).save(root / "masks" / name)

    ids = np.zeros((20, 20), np.uint8)
    ids[5:10, 5:10], ids[12:15, 12:15], ids[0] = 1, 2, 255
    for i in range(5):
        image(f"good{i}.png")
        mask(f"good{i}.png", ids)
    image("unknown_id.png")
    mask("unknown_id.png", np.where(ids == 2, 3, ids))
    image("wrong_size.png")
    mask("wrong_size.png", ids[:, :18])
    image("colour.png")
    Image.fromarray(np.full((20, 20, 3), (1, 2, 3), np.uint8)).save(root / "masks" / "colour.png")
    image("broken_mask.png")
    (root / "masks" / "broken_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    mask("no_image.png", ids)
    image("no_mask.png")
    image("bad_image.jpg")
    _half(root / "images" / "bad_image.jpg", root / "images" / "bad_image.jpg")
    mask("bad_image.png", ids)
    (root / "classes.txt").write_text("cat\ndog\n")
    return Prepared(
        tmp,
        store,
        task="segmentation",
        **{"data.source": "masks", "data.path": root, "model.architecture": "unet"},
    )


@pytest.mark.parametrize("name", MASK_ROWS)
def test_bad_mask_record_is_skipped_named_and_counted(masks, name):
    (reason,) = masks.reasons(name)
    assert MASK_ROWS[name] in reason
    assert masks.metrics["skipped_records"] == len(MASK_ROWS)


def test_masks_keep_every_good_record(masks):
    assert sum(masks.spec["counts"].values()) == 5


# ---------------------------------------------------------------------- data.skip_bad_records
def test_skip_bad_records_false_fails_the_prepare_run_naming_them(folder, tmp_path, store, monkeypatch):
    import mlflow

    from cnn_apps import stages, tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    config = load_config(
        None,
        _overrides(
            tmp_path,
            store,
            **{"data.source": "folder", "data.skip_bad_records": False, "data.path": folder.tmp / "photos"},
        ),
    )
    tracking.setup(config)
    with pytest.raises(DataError, match=r"data.skip_bad_records is false .* 7 records skipped: .*corrupt"):
        stages.prepare(config)
    (run,) = mlflow.search_runs(
        search_all_experiments=True, output_format="list", filter_string="attributes.status = 'FAILED'"
    )
    assert run.data.metrics["skipped_records"] == 7
    assert "skipped_records.csv" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "argv, text",
    [
        (["--set", "training.epocs=3"], "error: unknown config key 'training.epocs'. Did you mean 'epochs'?"),
        (["--set", "dataa.source=folder"], "error: unknown config key 'dataa'. Did you mean 'data'?"),
        (["--set", "training.epochs=three"], "error: training.epochs: expected int, got str 'three'"),
        (["--set", "data.image_size=[64]"], "error: data.image_size: expected int, got list [64]"),
        (["--set", "data.source=csv"], "error: data.source: 'csv' is not one of 'shapes'"),
    ],
)
def test_bad_config_override_is_an_error_naming_the_key(tmp_path, env, argv, text):
    rc, _, err = _cli("prepare", *argv)
    assert rc == 2 and err.startswith(text) and "Traceback" not in err


@pytest.mark.parametrize(
    "yaml_text, text",
    [
        ("data:\n  sorce: folder\n", "unknown config key 'data.sorce'. Did you mean 'source'?"),
        ("training:\n  learning_rate: fast\n", "training.learning_rate: expected float, got str 'fast'"),
        ("training: [1, 2]\n", "training: expected a mapping of keys"),
        ("data: {source: folder\n", "is not valid YAML"),
    ],
)
def test_bad_config_file_is_an_error_naming_the_key_and_file(tmp_path, env, yaml_text, text):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml_text)
    rc, _, err = _cli("prepare", "--config", path)
    assert rc == 2 and text in err and str(path) in err and "Traceback" not in err


def test_config_errors_are_config_errors():
    with pytest.raises(ConfigError):
        load_config(None, ["training.epochs=1.5"])


# ---------------------------------------------------------------------- --from-run
@pytest.mark.parametrize("stage", ["evaluate", "export"])
def test_from_run_that_does_not_exist(folder, stage):
    rc, _, err = _cli(stage, "--from-run", "0123456789abcdef0123456789abcdef", *set_args(folder.overrides))
    assert rc == 2 and err.startswith("error: run 0123456789abcdef0123456789abcdef ") and "not found" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("stage", ["evaluate", "export"])
def test_from_run_of_the_wrong_stage(folder, stage):
    rc, _, err = _cli(stage, "--from-run", folder.run_id, *set_args(folder.overrides))
    assert rc == 2 and "Traceback" not in err
    assert f"error: run {folder.run_id} is a 'prepare' run; this stage needs a run of stage train" in err


@pytest.mark.parametrize("stage", ["evaluate", "export"])
def test_from_run_missing(stage, env):
    rc, _, err = _cli(stage)
    assert rc == 2 and "the following arguments are required: --from-run" in err


# ---------------------------------------------------------------------- predict: tiny images
@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    from tf_serving_stub import export, tiny_classifier, tiny_detector, tiny_segmenter

    base = tmp_path_factory.mktemp("exports")
    for task, model in {
        "classification": tiny_classifier(),
        "detection": tiny_detector(),
        "segmentation": tiny_segmenter(),
    }.items():
        export(model, base / task / "1")
    return base


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_predict_on_images_smaller_than_the_stride(tiny_exports, tmp_path, task):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, (h, w) in TINY.items():
        Image.fromarray(_rgb(h, w)).save(folder / name)
    out = tmp_path / "results.jsonl"
    extra = ["--masks", tmp_path / "masks"] if task == "segmentation" else []
    rc, _, err = _cli("predict", "--model", tiny_exports / task, "--input", folder, "--output", out, *extra)
    assert rc == 0, err
    records = {Path(r["file"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == set(TINY) and not any("error" in r for r in records.values())
    for name, (h, w) in TINY.items():
        r = records[name]
        if task == "detection":
            assert (r["width"], r["height"]) == (w, h)
            for d in r["detections"]:  # boxes in the image's own pixels
                x1, y1, x2, y2 = d["box"]
                assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        elif task == "segmentation":
            assert sum(r["class_pixels"].values()) == h * w
            assert np.asarray(Image.open(tmp_path / "masks" / f"{Path(name).stem}.png")).shape == (h, w)
        else:
            assert 0 <= r["class_id"] < len(r["probabilities"])
