"""Studies: one parent MLflow run, one nested train run per setting, same data and seed.

* ``regularization``: the settings of ``study.settings`` (none, l1, l2, dropout,
  batch_norm, batch_norm+dropout, all); "on" uses the strength given in the
  config's ``regularization`` section, "off" is zero / no batch norm; "all" is
  every tool given a strength there, plus batch norm.
* ``learning-curve``: training error and validation error against the number of
  training examples (``study.train_sizes``), the diagnostic for "would more data help?".
* ``depth``: ``study.depth_models`` (plain18 vs resnet18) with per-epoch error
  curves: the degradation problem of deep plain nets that residual connections fix.
* ``transfer``: a source model is trained on ``study.source_data`` (labelled, or a
  rotation ``pretext`` task with ``study.source_task``), then each of ``study.modes``
  (feature_extraction, shallow, fine_tune, scratch) is a finetune child on the
  config's (small) target data, for each of ``study.examples_per_class``; every
  child is evaluated on the target's test split.
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


# ---------------------------------------------------------------------- transfer
_TRANSFER_COLUMNS = (
    "mode",
    "examples_per_class",
    "train_examples",
    "test_accuracy",
    "val_accuracy",
    "train_error",
    "val_error",
    "verdict",
    "run_id",
)


def transfer_study(config: Config) -> StageResult:
    """Source model once, then every (mode, examples per class) as a finetune child, evaluated."""
    import mlflow

    from cnn_apps.stages.evaluate import evaluate
    from cnn_apps.stages.finetune import finetune
    from cnn_apps.stages.prepare import prepare
    from cnn_apps.stages.train import train

    s = config.study
    unknown = set(s.modes) - {"feature_extraction", "shallow", "fine_tune", "scratch"}
    if unknown or not s.modes:
        raise ConfigError(
            f"study.modes: unknown {sorted(unknown)}; use feature_extraction, shallow, fine_tune, scratch"
        )
    source_config = copy.deepcopy(config)
    source_config.task = s.source_task
    try:
        from cnn_apps.config import from_dict

        merged = from_dict({"data": {**source_config.data.__dict__, **s.source_data}}).data
    except ConfigError as exc:
        raise ConfigError(f"study.source_data: {exc}") from None
    source_config.data = merged
    source_config.training.epochs = s.source_epochs
    target = prepare(config)
    spec = tracking.load_dataset_spec(target.run_id)
    sizes = s.examples_per_class or [None]
    rows = []
    with tracking.stage_run(
        config,
        "study",
        model="transfer",
        dataset=dataset_label(spec),
        source_run=target.run_id,
        fingerprint=spec.fingerprint,
        tags={"study": "transfer", "source_task": s.source_task},
    ) as parent:
        log.info("study transfer: training the source model (%s on %s)", s.source_task, merged.source)
        src = train(
            source_config,
            None,
            nested=True,
            tags={"study": "transfer", "setting": "source"},
            run_name=f"train:{config.model.backbone}:{merged.source}:source-{s.source_task}",
        )
        mlflow.set_tag("source_model_run", src.run_id)
        for n in sizes:
            child_config = copy.deepcopy(config)
            if n is not None:
                child_config.data.max_train_examples = n * spec.num_classes
            for mode in s.modes:
                child_config.finetune.mode = mode
                label = f"{mode}" + ("" if n is None else f"@{n}")
                log.info("study transfer: %s", label)
                result = finetune(
                    child_config,
                    src.run_id,
                    nested=True,
                    tags={"study": "transfer", "setting": label, "study_run": parent.info.run_id},
                )
                tested = evaluate(child_config, result.run_id, nested=True)
                summary = result.extra["summary"]
                d = summary["diagnosis"]
                rows.append(
                    {
                        "mode": mode,
                        "examples_per_class": n if n is not None else "all",
                        "train_examples": int(mlflow.get_run(result.run_id).data.metrics["train_examples"]),
                        "test_accuracy": tested.outputs["test_accuracy"],
                        "val_accuracy": summary["best_val_accuracy"],
                        "train_error": d.train_error,
                        "val_error": d.val_error,
                        "verdict": d.verdict,
                        "run_id": result.run_id,
                    }
                )
        mlflow.log_metrics(
            {f"test_accuracy_{r['mode']}_{r['examples_per_class']}": r["test_accuracy"] for r in rows}
        )
        mlflow.log_text(csv_table(rows, _TRANSFER_COLUMNS), "results.csv")
        mlflow.log_text(
            markdown_table(rows, _TRANSFER_COLUMNS, f"Study: transfer to {dataset_label(spec)}"), "results.md"
        )
        tracking.log_figure(_transfer_plot(rows, s.source_task, dataset_label(spec)), "transfer.png")
        best = max(rows, key=lambda r: r["test_accuracy"])
        return StageResult(
            parent.info.run_id,
            "study",
            {
                "study": "transfer",
                "source_run": src.run_id,
                "children": len(rows),
                "best": f"{best['mode']}@{best['examples_per_class']}",
                "best_test_accuracy": best["test_accuracy"],
            },
            extra={"rows": rows},
        )


def _transfer_plot(rows, source_task: str, dataset: str):
    from cnn_apps import plots

    sizes = sorted({r["examples_per_class"] for r in rows}, key=lambda v: (isinstance(v, str), v))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    if len(sizes) > 1 and all(isinstance(v, int) for v in sizes):
        series = {
            m: [
                next(r["test_accuracy"] for r in rows if r["mode"] == m and r["examples_per_class"] == n)
                for n in sizes
            ]
            for m in modes
        }
        fig = plots.curves(
            sizes,
            series,
            title=f"transfer ({source_task} source) to {dataset}",
            xlabel="target training examples per class",
            ylabel="test accuracy",
            logx=True,
        )
        return fig
    return plots.grouped_bars(
        modes,
        {"test accuracy": [next(r["test_accuracy"] for r in rows if r["mode"] == m) for m in modes]},
        title=f"transfer ({source_task} source) to {dataset}",
        ylabel="test accuracy",
    )
