"""prepare: build or scan the dataset once, count it, show it, record it in MLflow.

Logs ``count_<split>`` and ``count_<split>_<class>`` metrics, ``skipped_records``
(with ``skipped_records.csv`` naming each file and why), ``dataset.json`` (the
:class:`~cnn_apps.data.spec.DatasetSpec` later stages read), a class-balance plot
and a grid of training samples.

Detection: ``count_<split>_<class>`` counts boxes, not images; ``boxes_<split>``
totals them, ``images_without_objects_<split>`` counts images with no box, and the
per-split tallies a source keeps of objects left out of the targets (``difficult_boxes``,
``crowd_annotations``, ``left_out_boxes``) become ``<tally>_<split>``. The sample grid
draws the boxes with their class names.

Bad records (unreadable images, bad boxes, bad masks, broken annotations) are skipped and
counted by default. With ``data.skip_bad_records: false`` a dataset with any bad record
fails instead: the run still logs ``skipped_records`` and ``skipped_records.csv``, then
ends FAILED with a :class:`~cnn_apps.errors.DataError` naming the first few.
"""

from __future__ import annotations

import csv
import io

from cnn_apps import tasks, tracking
from cnn_apps.config import Config
from cnn_apps.stages.common import StageResult, log
from cnn_apps.tasks.inputs import dataset_label, metric_key, source_config


def prepare(config: Config) -> StageResult:
    import mlflow

    from cnn_apps import plots
    from cnn_apps.data.sources import get_source

    source = get_source(source_config(config))
    spec = source.prepare()
    for item in spec.skipped:
        log.warning("skipped %s: %s", item["file"], item["reason"])
    if spec.skipped:
        log.warning("%d records skipped; see skipped_records.csv in the prepare run", len(spec.skipped))

    with tracking.stage_run(
        config, "prepare", model="-", dataset=dataset_label(spec), fingerprint=spec.fingerprint
    ) as run:
        metrics = {f"count_{s}": n for s, n in spec.counts.items()}
        for split, per_class in spec.class_counts.items():
            for name, n in per_class.items():
                metrics[f"count_{split}_{metric_key(name)}"] = n
        metrics.update(tasks.task_class(config).dataset_metrics(spec))  # e.g. a detector's box counts
        metrics["skipped_records"] = len(spec.skipped)
        metrics["num_classes"] = spec.num_classes
        mlflow.log_metrics(metrics)
        mlflow.log_text(spec.to_json(), tracking.DATASET_ARTIFACT)
        if spec.skipped:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=["file", "reason"])
            w.writeheader()
            w.writerows(spec.skipped)
            mlflow.log_text(buf.getvalue(), "skipped_records.csv")
            if not config.data.skip_bad_records:
                from cnn_apps.data.sources import skipped_summary
                from cnn_apps.errors import DataError

                raise DataError(
                    f"data.skip_bad_records is false and {dataset_label(spec)} has bad records"
                    f"{skipped_summary(spec.skipped)} (all in skipped_records.csv of run "
                    f"{run.info.run_id}); fix or remove them, or set data.skip_bad_records=true"
                )
        tracking.log_figure(
            plots.class_balance(spec.class_counts, f"{dataset_label(spec)}: per class"), "class_balance.png"
        )
        images, titles, boxes, labels = _samples(source, spec, n=32)
        grid = plots.image_grid(images, titles, title=f"{dataset_label(spec)}: train samples", boxes=boxes)
        if boxes is not None:
            _name_boxes(grid, boxes, labels, spec.class_names)
        tracking.log_figure(grid, "samples.png")
        return StageResult(
            run.info.run_id,
            "prepare",
            {
                "dataset": dataset_label(spec),
                "fingerprint": spec.fingerprint,
                **{f"count_{s}": n for s, n in spec.counts.items()},
                "skipped_records": len(spec.skipped),
            },
        )


def _samples(source, spec, n: int):
    """(images, titles, boxes, labels) of the first ``n`` training examples at one size;
    boxes and labels are None unless the examples carry boxes."""
    from cnn_apps.data.pipeline import resize_example

    images, titles, boxes, labels = [], [], [], []
    size = spec.image_shape[0] or 96
    for ex in source.load(spec, "train").take(n):
        ex = resize_example(ex, size)
        images.append(ex["image"].numpy())
        if "label" in ex:
            titles.append(spec.class_names[int(ex["label"])])
        elif "boxes" in ex:
            boxes.append(ex["boxes"].numpy())
            labels.append(ex["labels"].numpy())
            titles.append(f"{len(labels[-1])} objects")
        else:
            titles.append("")
    return images, titles, (boxes if boxes else None), (labels if boxes else None)


def _name_boxes(fig, boxes, labels, class_names) -> None:
    """Write each box's class name at its top-left corner, on the grid's axes (row-major,
    as :func:`cnn_apps.plots.image_grid` lays them out)."""
    for ax, image_boxes, image_labels in zip(fig.axes, boxes, labels):
        for (x1, y1, _, _), label in zip(image_boxes, image_labels):
            name = class_names[int(label)] if 0 <= int(label) < len(class_names) else str(int(label))
            ax.text(
                x1,
                y1,
                name,
                fontsize=5,
                color="black",
                va="bottom",
                bbox={"facecolor": "yellow", "alpha": 0.7, "pad": 0.5, "linewidth": 0},
            )
