"""The transfer study (``cnn-apps study transfer``): does a source task make a small target easier?

The source model is trained first (``study.source_data`` over the config's data, ``study.source_task``,
at most ``study.source_epochs`` epochs with the training section's early stopping) and scored on
its own test split (``source_test_accuracy``). Then, as nested runs of one parent:

* every ``study.modes`` mode (feature extraction, shallow, fine-tune, scratch) at every
  ``study.examples_per_class`` size, once per ``study.seeds`` seed (the seed draws the target's
  training subset, ``data.subset_seed``, and initializes training; the validation and test splits
  stay the same), each evaluated on the target's test split;
* Yosinski et al.'s layer curve ("How transferable are features in deep neural networks?",
  2014), when ``study.layer_curve_blocks`` lists block counts k: a network whose first k backbone
  blocks are copied frozen from the source (AnB) or from a network trained on the target itself
  (BnB, whose base is the scratch network on the same target examples), the rest trained from
  random weights on the target (``finetune.mode: copy_blocks``).

With ``data.classes`` the study is the paper's split-class experiment: the source is one half of a
dataset's classes (``study.source_data: {classes: [...]}``), the target the other half.

The parent logs ``results.csv`` (one row per child), ``summary.csv`` (mean, standard deviation,
minimum and maximum over the seeds), ``layer_curve.csv`` / ``layer_curve_summary.csv``,
``results.md``, ``transfer.png`` and ``layer_curve.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics

from cnn_apps import tracking
from cnn_apps.config import STUDY_TRANSFER_MODES, Config
from cnn_apps.errors import ConfigError
from cnn_apps.stages.common import StageResult, log
from cnn_apps.stages.tables import csv_table, markdown_table
from cnn_apps.tasks.inputs import dataset_label

COLUMNS = (
    "mode",
    "examples_per_class",
    "seed",
    "train_examples",
    "test_accuracy",
    "val_accuracy",
    "train_error",
    "val_error",
    "verdict",
    "run_id",
)
SUMMARY_COLUMNS = (
    "mode",
    "examples_per_class",
    "seeds",
    "test_accuracy_mean",
    "test_accuracy_std",
    "test_accuracy_min",
    "test_accuracy_max",
)
CURVE_COLUMNS = ("network", "copied_blocks", "seed", "test_accuracy", "val_accuracy", "train_error", "run_id")
CURVE_SUMMARY_COLUMNS = (
    "network",
    "copied_blocks",
    "seeds",
    "test_accuracy_mean",
    "test_accuracy_std",
    "test_accuracy_min",
    "test_accuracy_max",
)


def _check(config: Config) -> None:
    s = config.study
    unknown = set(s.modes) - set(STUDY_TRANSFER_MODES)
    if unknown or not s.modes:
        raise ConfigError(f"study.modes: unknown {sorted(unknown)}; use {', '.join(STUDY_TRANSFER_MODES)}")
    if not s.seeds:
        raise ConfigError("study.seeds: give at least one seed, e.g. [0, 1, 2]")
    if len(set(s.seeds)) != len(s.seeds):
        raise ConfigError(f"study.seeds: a seed is repeated in {s.seeds}")
    if any(k < 1 for k in s.layer_curve_blocks):
        raise ConfigError(f"study.layer_curve_blocks: block counts are >= 1, got {s.layer_curve_blocks}")
    modes = (*STUDY_TRANSFER_MODES, "copy_blocks")
    for section in ("training", "finetune"):
        for mode, overrides in getattr(s, f"mode_{section}").items():
            if mode not in modes:
                raise ConfigError(f"study.mode_{section}: unknown mode {mode!r}; use {', '.join(modes)}")
            if not isinstance(overrides, dict):
                raise ConfigError(
                    f"study.mode_{section}.{mode}: give {section}-section keys, e.g. {{epochs: 100}}"
                )
            _mode_section(
                config, section, mode, overrides
            )  # an unknown key fails here, listing the valid ones


def _mode_section(config: Config, section: str, mode: str, overrides: dict):
    """The config's ``section`` (training or finetune) with ``study.mode_<section>[mode]`` over it."""
    from cnn_apps.config import from_dict

    try:
        values = {**dataclasses.asdict(getattr(config, section)), **overrides}
        return getattr(from_dict({section: values}), section)
    except ConfigError as exc:
        raise ConfigError(f"study.mode_{section}.{mode}: {exc}") from None


def source_config(config: Config) -> Config:
    """The source model's config: the study's, with ``study.source_data`` over its data section,
    ``study.source_task`` and at most ``study.source_epochs`` epochs."""
    from cnn_apps.config import from_dict

    s = config.study
    out = copy.deepcopy(config)
    out.task = s.source_task
    try:
        out.data = from_dict({"data": {**out.data.__dict__, **s.source_data}}).data
    except ConfigError as exc:
        raise ConfigError(f"study.source_data: {exc}") from None
    out.training.epochs = s.source_epochs
    return out


def check_source_run(source: Config, run_id: str) -> None:
    """``study.source_run`` must be a train run on the source's data (same fingerprint) with the
    study's model section: else the study would compare other networks than its config says."""
    from cnn_apps.config import flatten

    run = tracking.get_run(run_id, expect_stage=("train",))
    trained_on = tracking.load_dataset_spec(run_id).fingerprint
    if trained_on != source.data_fingerprint():
        raise ConfigError(
            f"study.source_run {run_id} was trained on other data (fingerprint {trained_on}) than the "
            f"study's source data ({source.data_fingerprint()}: data with study.source_data over it)"
        )
    params = run.data.params
    differ = [
        f"{key}={params[key]} (the study's: {tracking.param_text(value)})"
        for key, value in flatten({"model": dataclasses.asdict(source.model)}).items()
        if key in params and params[key] != tracking.param_text(value)
    ]
    if differ:
        raise ConfigError(f"study.source_run {run_id} has another model: {', '.join(differ)}")


def child_config(config: Config, num_classes: int, n: int | None, seed: int, mode: str, copied: int = 0):
    """One child's config: ``n`` target examples per class (None: all) drawn with ``seed``, which
    also seeds training."""
    out = copy.deepcopy(config)
    if n is not None:
        out.data.max_train_examples = n * num_classes
    out.data.subset_seed = seed
    out.training.seed = seed
    if mode in config.study.mode_finetune:
        out.finetune = _mode_section(out, "finetune", mode, config.study.mode_finetune[mode])
    out.finetune.mode = mode
    if copied:
        out.finetune.copied_blocks = copied
    if mode in config.study.mode_training:
        out.training = _mode_section(out, "training", mode, config.study.mode_training[mode])
        out.training.seed = seed
    return out


def summarize(rows, keys: tuple) -> list[dict]:
    """Mean, standard deviation (sample; 0 for one seed), minimum and maximum of the test
    accuracy over the rows sharing ``keys``, in first-seen order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r["test_accuracy"])
    out = []
    for key, values in groups.items():
        out.append(
            {
                **dict(zip(keys, key)),
                "seeds": len(values),
                "test_accuracy_mean": statistics.fmean(values),
                "test_accuracy_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "test_accuracy_min": min(values),
                "test_accuracy_max": max(values),
            }
        )
    return out


def transfer_study(config: Config) -> StageResult:
    """Source model once, then every (mode, examples per class, seed) and the layer curve as
    finetune children, each evaluated on the target's test split."""
    import mlflow

    from cnn_apps.stages.evaluate import evaluate
    from cnn_apps.stages.finetune import finetune
    from cnn_apps.stages.prepare import prepare
    from cnn_apps.stages.train import train

    _check(config)
    s = config.study
    source = source_config(config)
    if s.source_run:
        check_source_run(source, s.source_run)
    target = prepare(config)
    spec = tracking.load_dataset_spec(target.run_id)
    sizes = s.examples_per_class or [None]
    with tracking.stage_run(
        config,
        "study",
        model="transfer",
        dataset=dataset_label(spec),
        source_run=target.run_id,
        fingerprint=spec.fingerprint,
        tags={"study": "transfer", "source_task": s.source_task},
    ) as parent:
        if s.source_run:
            log.info("study transfer: the source is run %s (study.source_run)", s.source_run)
            src_run = s.source_run
            src_summary = tracking.get_run(src_run).data.metrics
        else:
            log.info("study transfer: training the source (%s on %s)", s.source_task, source.data.source)
            src = train(
                source,
                None,
                nested=True,
                tags={"study": "transfer", "setting": "source", "study_run": parent.info.run_id},
                run_name=f"train:{config.model.backbone}:{source.data.source}:source-{s.source_task}",
            )
            src_run, src_summary = src.run_id, src.extra["summary"]
        src_test = evaluate(source, src_run, nested=True)
        mlflow.set_tag("source_model_run", src_run)
        mlflow.log_metrics(
            {
                "source_test_accuracy": src_test.outputs["test_accuracy"],
                "source_val_accuracy": src_summary["best_val_accuracy"],
                "source_epochs": src_summary["epochs_trained"],
                "source_classes": len(tracking.load_dataset_spec(src_run).class_names),
            }
        )

        def child(cfg: Config, label: str, source_run: str) -> dict:
            log.info("study transfer: %s", label)
            result = finetune(
                cfg,
                source_run,
                nested=True,
                tags={"study": "transfer", "setting": label, "study_run": parent.info.run_id},
            )
            tested = evaluate(cfg, result.run_id, nested=True)
            summary = result.extra["summary"]
            d = summary["diagnosis"]
            return {
                "train_examples": int(mlflow.get_run(result.run_id).data.metrics["train_examples"]),
                "test_accuracy": tested.outputs["test_accuracy"],
                "val_accuracy": summary["best_val_accuracy"],
                "train_error": d.train_error,
                "val_error": d.val_error,
                "verdict": d.verdict,
                "run_id": result.run_id,
            }

        rows, scratch = [], {}  # scratch[(n, seed)]: the run of the network trained on the target only
        for n in sizes:
            for seed in s.seeds:
                for mode in s.modes:
                    label = f"{mode}" + ("" if n is None else f"@{n}") + f"/seed{seed}"
                    cfg = child_config(config, spec.num_classes, n, seed, mode)
                    row = child(cfg, label, src_run)
                    rows.append({"mode": mode, "examples_per_class": n or "all", "seed": seed, **row})
                    if mode == "scratch":
                        scratch[(n, seed)] = row["run_id"]
        summary_rows = summarize(rows, ("mode", "examples_per_class"))
        curve = _layer_curve(config, spec, src_run, scratch, child) if s.layer_curve_blocks else []
        curve_summary = summarize(curve, ("network", "copied_blocks")) if curve else []

        mlflow.log_metrics(
            {
                f"test_accuracy_{r['mode']}_{r['examples_per_class']}": r["test_accuracy_mean"]
                for r in summary_rows
            }
        )
        mlflow.log_text(csv_table(rows, COLUMNS), "results.csv")
        mlflow.log_text(csv_table(summary_rows, SUMMARY_COLUMNS), "summary.csv")
        title = f"Study: transfer to {dataset_label(spec)}"
        report = markdown_table(summary_rows, SUMMARY_COLUMNS, title)
        if curve:
            mlflow.log_text(csv_table(curve, CURVE_COLUMNS), "layer_curve.csv")
            mlflow.log_text(csv_table(curve_summary, CURVE_SUMMARY_COLUMNS), "layer_curve_summary.csv")
            report += "\n" + markdown_table(curve_summary, CURVE_SUMMARY_COLUMNS, "Layer curve (AnB / BnB)")
            base = [
                r["test_accuracy_mean"]
                for r in summary_rows
                if r["mode"] == "scratch" and r["examples_per_class"] == (s.layer_curve_examples or "all")
            ]
            figure = layer_curve_figure(curve_summary, dataset_label(spec), base[0] if base else None)
            tracking.log_figure(figure, "layer_curve.png")
        mlflow.log_text(report, "results.md")
        tracking.log_figure(summary_figure(summary_rows, s.source_task, dataset_label(spec)), "transfer.png")
        best = max(summary_rows, key=lambda r: r["test_accuracy_mean"])
        return StageResult(
            parent.info.run_id,
            "study",
            {
                "study": "transfer",
                "source_run": src_run,
                "source_test_accuracy": src_test.outputs["test_accuracy"],
                "children": len(rows) + len(curve),
                "best": f"{best['mode']}@{best['examples_per_class']}",
                "best_test_accuracy": round(best["test_accuracy_mean"], 4),
            },
            extra={"rows": rows, "summary": summary_rows, "curve": curve, "curve_summary": curve_summary},
        )


def _layer_curve(config: Config, spec, source_run: str, scratch: dict, child) -> list[dict]:
    """AnB and BnB for every k of ``study.layer_curve_blocks`` and every seed, on
    ``study.layer_curve_examples`` target examples per class."""
    s = config.study
    n = s.layer_curve_examples
    rows = []
    for seed in s.seeds:
        base_b = scratch.get((n, seed))
        if base_b is None:  # the network trained on the target itself, when the modes had none
            cfg = child_config(config, spec.num_classes, n, seed, "scratch")
            base_b = child(cfg, f"baseB@{n or 'all'}/seed{seed}", source_run)["run_id"]
        for k in s.layer_curve_blocks:
            for network, run in (("AnB", source_run), ("BnB", base_b)):
                cfg = child_config(config, spec.num_classes, n, seed, "copy_blocks", copied=k)
                row = child(cfg, f"{network}{k}@{n or 'all'}/seed{seed}", run)
                rows.append({"network": network, "copied_blocks": k, "seed": seed, **row})
    return rows


def summary_figure(summary_rows, source_task: str, dataset: str):
    """``transfer.png``: test accuracy (mean +- std over the seeds) of each mode against the
    target examples per class, from ``summary.csv``'s rows."""
    from cnn_apps import plots

    sizes = list(dict.fromkeys(r["examples_per_class"] for r in summary_rows))
    modes = list(dict.fromkeys(r["mode"] for r in summary_rows))

    def pick(mode, key):
        return [
            next(r[key] for r in summary_rows if r["mode"] == mode and r["examples_per_class"] == n)
            for n in sizes
        ]

    title = f"transfer ({source_task} source) to {dataset}"
    if len(sizes) > 1 and all(isinstance(v, int) for v in sizes):
        fig = plots.curves(
            sizes,
            {m: pick(m, "test_accuracy_mean") for m in modes},
            title=title,
            xlabel="target training examples per class",
            ylabel="test accuracy (mean over seeds)",
            logx=True,
            errors={m: pick(m, "test_accuracy_std") for m in modes},
        )
        ax = fig.axes[0]  # the sizes themselves as ticks, not powers of ten
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        return fig
    return plots.grouped_bars(
        modes,
        {"test accuracy": [pick(m, "test_accuracy_mean")[0] for m in modes]},
        title=title,
        ylabel="test accuracy",
    )


def layer_curve_figure(curve_summary, dataset: str, baseline: float | None = None):
    """``layer_curve.png``: AnB and BnB test accuracy against the blocks copied, from
    ``layer_curve_summary.csv``'s rows; ``baseline``: the scratch network's accuracy on the same
    examples, as a dashed line (Yosinski et al.'s reference)."""
    from cnn_apps import plots

    blocks = sorted({r["copied_blocks"] for r in curve_summary})

    def pick(network, key):
        return [
            next(r[key] for r in curve_summary if r["network"] == network and r["copied_blocks"] == k)
            for k in blocks
        ]

    fig = plots.curves(
        blocks,
        {
            "AnB (source blocks)": pick("AnB", "test_accuracy_mean"),
            "BnB (target blocks)": pick("BnB", "test_accuracy_mean"),
        },
        title=f"layer curve on {dataset}: first k blocks copied and frozen",
        xlabel="blocks copied (k)",
        ylabel="test accuracy (mean over seeds)",
        errors={
            "AnB (source blocks)": pick("AnB", "test_accuracy_std"),
            "BnB (target blocks)": pick("BnB", "test_accuracy_std"),
        },
    )
    ax = fig.axes[0]
    ax.set_xticks(blocks)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="scratch on the target")
        ax.legend()
    values = [*pick("AnB", "test_accuracy_mean"), *pick("BnB", "test_accuracy_mean")]
    values += [baseline] if baseline is not None else []
    ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.03))
    return fig
