"""prepare: build or scan the dataset once, count it, show it, record it in MLflow.

Logs ``count_<split>`` and ``count_<split>_<class>`` metrics, ``skipped_records``
(with ``skipped_records.csv`` naming each file and why), ``dataset.json`` (the
:class:`~cnn_apps.data.spec.DatasetSpec` later stages read), a class-balance plot
and a grid of training samples.
"""

from __future__ import annotations

import csv
import io

from cnn_apps import tracking
from cnn_apps.config import Config
from cnn_apps.stages.common import StageResult, dataset_label, log, metric_key, source_config


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

    with tracking.stage_run(config, "prepare", model="-", dataset=dataset_label(spec),
                            fingerprint=spec.fingerprint) as run:
        metrics = {f"count_{s}": n for s, n in spec.counts.items()}
        for split, per_class in spec.class_counts.items():
            for name, n in per_class.items():
                metrics[f"count_{split}_{metric_key(name)}"] = n
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
        tracking.log_figure(plots.class_balance(spec.class_counts, f"{dataset_label(spec)}: per class"),
                            "class_balance.png")
        images, titles = _samples(source, spec, n=32)
        tracking.log_figure(plots.image_grid(images, titles, title=f"{dataset_label(spec)}: train samples"),
                            "samples.png")
        return StageResult(run.info.run_id, "prepare",
                           {"dataset": dataset_label(spec), "fingerprint": spec.fingerprint,
                            **{f"count_{s}": n for s, n in spec.counts.items()},
                            "skipped_records": len(spec.skipped)})


def _samples(source, spec, n: int):
    from cnn_apps.data.pipeline import resize_example

    images, titles = [], []
    size = spec.image_shape[0] or 96
    for ex in source.load(spec, "train").take(n):
        ex = resize_example(ex, size)
        images.append(ex["image"].numpy())
        if "label" in ex:
            titles.append(spec.class_names[int(ex["label"])])
        else:
            titles.append("")
    return images, titles
