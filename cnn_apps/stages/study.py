"""Studies: one parent MLflow run, one nested train run per setting, same data and seed.

* ``regularization``: the settings of ``study.settings`` (none, l1, l2, dropout,
  batch_norm, batch_norm+dropout, all); "on" uses the strength given in the
  config's ``regularization`` section, "off" is zero / no batch norm; "all" is
  every tool given a strength there, plus batch norm.
* ``learning-curve``: training error and validation error against the number of
  training examples (``study.train_sizes``), the diagnostic for "would more data help?".
* ``depth``: ``study.depth_models`` (plain18 vs resnet18) with per-epoch error
  curves: the degradation problem of deep plain nets that residual connections fix.
* ``transfer``: a source model, then every finetune mode at every target size and seed,
  and Yosinski et al.'s layer curve (:mod:`cnn_apps.stages.transfer_study`).
* ``detectors``: the detector speed ladder (:mod:`cnn_apps.stages.ladder`).
* ``segmentation``: the segmenters side by side (:mod:`cnn_apps.stages.segmenter_study`).

The parent logs ``results.csv``, ``results.md`` and a plot; each child is a full
train run (its model can be evaluated or exported like any other).
"""

from __future__ import annotations

import copy

from cnn_apps import tasks, tracking
from cnn_apps.config import Config
from cnn_apps.errors import ConfigError
from cnn_apps.stages.common import StageResult, log
from cnn_apps.stages.tables import csv_table, markdown_table
from cnn_apps.tasks.inputs import dataset_label

STUDIES = ("regularization", "learning-curve", "depth", "transfer", "detectors", "segmentation")
REGULARIZATION_SETTINGS = ("none", "l1", "l2", "dropout", "batch_norm", "batch_norm+dropout", "all")


def study_columns(score: str = "val_accuracy") -> tuple:
    """The table of a study over settings; ``score`` names the validation score column."""
    return (
        "setting",
        "train_error",
        "val_error",
        "bias",
        "variance",
        "verdict",
        score,
        "epochs",
        "seconds",
        "run_id",
    )


def regularization_setting(config: Config, setting: str) -> Config:
    """A copy of ``config`` with only the tools named by ``setting`` switched on."""
    r = config.regularization
    if setting == "all":  # every tool the config gives a strength to, and batch norm
        parts = {t for t in ("l1", "l2", "dropout") if getattr(r, t) > 0} | {"batch_norm"}
    else:
        parts = set() if setting == "none" else set(setting.split("+"))
    unknown = parts - {"l1", "l2", "dropout", "batch_norm"}
    if unknown or not setting:
        raise ConfigError(
            f"study.settings: unknown setting '{setting}'; use "
            f"{', '.join(REGULARIZATION_SETTINGS)} or '+'-joined tools"
        )
    for tool in ("l1", "l2", "dropout"):
        if tool in parts and getattr(r, tool) <= 0:
            raise ConfigError(f"regularization.{tool} must be > 0 for the study's '{setting}' setting")
    out = copy.deepcopy(config)
    out.regularization.l1 = r.l1 if "l1" in parts else 0.0
    out.regularization.l2 = r.l2 if "l2" in parts else 0.0
    out.regularization.dropout = r.dropout if "dropout" in parts else 0.0
    out.regularization.batch_norm = "batch_norm" in parts
    return out


def _variants(kind: str, config: Config):
    """(label, config, train_limit) per child run."""
    if kind == "regularization":
        return [(s, regularization_setting(config, s), None) for s in config.study.settings]
    if kind == "learning-curve":
        if not config.study.train_sizes:
            raise ConfigError("study.train_sizes is empty")
        return [(str(n), config, n) for n in sorted(config.study.train_sizes)]
    if kind == "depth":
        out = []
        for name in config.study.depth_models:
            child = copy.deepcopy(config)
            child.model.backbone = name
            out.append((name, child, None))
        return out
    raise ConfigError(f"unknown study '{kind}'; choose one of {', '.join(STUDIES)}")


def study(kind: str, config: Config, from_run: str | None = None) -> StageResult:
    """Run study ``kind`` on the data of prepare run ``from_run`` (prepared first when None)."""
    import mlflow

    from cnn_apps.stages.train import train

    if kind not in STUDIES:
        raise ConfigError(f"unknown study '{kind}'; choose one of {', '.join(STUDIES)}")
    studies = tasks.task_class(config).studies
    if kind not in studies:
        raise ConfigError(
            f"study {kind} is not defined for task '{config.task}'; "
            f"its studies: {', '.join(studies) or 'none'}"
        )
    if kind == "detectors":  # the detector speed ladder
        from cnn_apps.stages.ladder import ladder_study

        return ladder_study(config, from_run)
    if kind == "segmentation":  # the segmenters side by side
        from cnn_apps.stages.segmenter_study import segmenter_study

        return segmenter_study(config, from_run)
    if kind == "transfer":
        from cnn_apps.stages.transfer_study import transfer_study

        return transfer_study(config)
    variants = _variants(kind, config)  # validate before any work
    if from_run is None:
        from cnn_apps.stages.prepare import prepare

        from_run = prepare(config).run_id
    tracking.setup(config)
    tracking.get_run(from_run, expect_stage=("prepare",))
    spec = tracking.load_dataset_spec(from_run)

    # the kept weights' validation score: accuracy, mAP50 or mIoU (the error diagnosed is 1 - it)
    score = f"val_{tasks.for_config(config, spec).main_metric}"
    rows, series = [], {}
    with tracking.stage_run(
        config,
        "study",
        model=kind,
        dataset=dataset_label(spec),
        source_run=from_run,
        fingerprint=spec.fingerprint,
        tags={"study": kind},
    ) as parent:
        for label, child_config, limit in variants:
            log.info("study %s: %s", kind, label)
            model_label = child_config.model.architecture or child_config.model.backbone
            result = train(
                child_config,
                from_run,
                nested=True,
                train_limit=limit,
                tags={"study": kind, "setting": label, "study_run": parent.info.run_id},
                run_name=f"train:{model_label}:{dataset_label(spec)}:{label}",
            )
            summary = result.extra["summary"]
            d = summary["diagnosis"]
            rows.append(
                {
                    "setting": label,
                    "train_error": d.train_error,
                    "val_error": d.val_error,
                    "bias": d.bias,
                    "variance": d.variance,
                    "verdict": d.verdict,
                    score: 1.0 - d.val_error,
                    "epochs": summary["epochs_trained"],
                    "seconds": summary["train_seconds"],
                    "run_id": result.run_id,
                }
            )
            series[label] = summary["series"]
        mlflow.log_metrics(
            {
                f"{k}_{_key(r['setting'])}": r[k]
                for r in rows
                for k in ("train_error", "val_error", "variance")
            }
        )
        columns = study_columns(score)
        mlflow.log_text(csv_table(rows, columns), "results.csv")
        mlflow.log_text(
            markdown_table(rows, columns, title=f"Study: {kind} on {dataset_label(spec)}"), "results.md"
        )
        tracking.log_figure(_plot(kind, rows, series, dataset_label(spec)), f"{kind}.png")
        best = min(rows, key=lambda r: r["val_error"])
        return StageResult(
            parent.info.run_id,
            "study",
            {
                "study": kind,
                "children": len(rows),
                "best_setting": best["setting"],
                "best_val_error": round(best["val_error"], 4),
            },
            extra={"rows": rows, "series": series},
        )


def _key(label: str) -> str:
    return label.replace("+", "_plus_")


def _plot(kind: str, rows, series, dataset: str):
    from cnn_apps import plots

    labels = [r["setting"] for r in rows]
    if kind == "learning-curve":
        return plots.curves(
            [int(x) for x in labels],
            {
                "training error": [r["train_error"] for r in rows],
                "validation error": [r["val_error"] for r in rows],
            },
            title=f"learning curve on {dataset}",
            xlabel="training examples",
            logx=True,
        )
    if kind == "depth":
        lines = {}
        for label in labels:
            lines[f"{label} train"] = series[label]["train_error"]
            lines[f"{label} validation"] = series[label]["val_error"]
        longest = max(len(v) for v in lines.values())
        return plots.curves(
            list(range(1, longest + 1)), lines, title=f"plain vs residual on {dataset}", xlabel="epoch"
        )
    return plots.grouped_bars(
        labels,
        {
            "training error": [r["train_error"] for r in rows],
            "validation error": [r["val_error"] for r in rows],
        },
        title=f"regularization study on {dataset}",
    )
