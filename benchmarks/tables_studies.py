"""Result tables of the studies (``benchmarks/study.py KIND --config C``): the segmenters, the
detector ladder, the regularization / learning-curve / depth diagnoses and the split-class
transfer study."""

from __future__ import annotations

from table_blocks import _name, _percent, _study, markdown


def segmenter_study() -> str:
    """``benchmarks/study.py segmentation --config pipelines/configs/shapes_segmenters.yaml``."""
    r = _study("segmentation", "shapes_segmenters")
    rows = [
        [
            _name(row["segmenter"]),
            *(
                f"{row[k]:.3f}"
                for k in ("test_miou", "test_pixel_accuracy", "test_mean_accuracy", "test_fw_iou")
            ),
            f"{row['ms_per_image']:.1f}",
            f"{row['images_per_s']:,.0f}",
            f"{int(row['params']):,}",
            f"{row['train_seconds']:,.0f} s, {int(row['epochs'])} epochs",
        ]
        for row in r["rows"]
    ]
    header = (
        "segmenter | test mIoU: | pixel accuracy: | mean accuracy: | fw IoU: | ms per image: | images/s: "
        "| parameters: | training:"
    )
    return markdown(header, rows, [r])


def detector_ladder() -> str:
    """``benchmarks/study.py detectors --config pipelines/configs/shapes_detector_ladder.yaml``."""
    r = _study("detectors", "shapes_detector_ladder")
    rows = []
    for row in r["rows"]:
        proposals = row["proposal_ms"]
        rows.append(
            [
                _name(row["detector"]),
                f"{row['test_map50']:.3f}",
                f"{row['test_coco_ap']:.3f}",
                f"{row['ms_per_image']:.1f}",
                f"{proposals:.0f}"
                if isinstance(proposals, float) and proposals == proposals and proposals
                else "-",
                f"{row['speedup']:.1f}x",
                f"{row['train_seconds']:,.0f} s",
            ]
        )
    header = (
        "detector | test mAP50: | COCO AP: | ms per image (study): | of it proposals: | speed-up: | training:"
    )
    return markdown(header, rows, [r])


def _diagnosis_table(kind: str, config: str, first: str) -> str:
    r = _study(kind, config)
    rows = []
    for row in r["rows"]:
        child = r["children"][row["run_id"]]["metrics"]
        best = int(child["best_epoch"]) + 1 if "best_epoch" in child else "n/a"
        rows.append(
            [
                row["setting"],
                _percent(row["train_error"]),
                _percent(row["val_error"]),
                f"{100 * row['variance']:.1f}",
                str(row["verdict"]).replace("_", " "),
                f"{row['epochs']} ({best})",
            ]
        )
    header = f"{first} | training error: | validation error: | variance: | verdict | epochs (best):"
    return markdown(header, rows, [r])


def regularization_study() -> str:
    """``benchmarks/study.py regularization --config pipelines/configs/fashion_mnist_regularization.yaml``."""
    return _diagnosis_table("regularization", "fashion_mnist_regularization", "setting")


def learning_curve() -> str:
    """``benchmarks/study.py learning-curve --config pipelines/configs/fashion_mnist_regularization.yaml``."""
    return _diagnosis_table("learning_curve", "fashion_mnist_regularization", "training images")


def depth_study() -> str:
    """``benchmarks/study.py depth --config pipelines/configs/fashion_mnist_depth.yaml``: errors of
    the kept (best-validation) epoch, and the running training error of the last epoch."""
    r = _study("depth", "fashion_mnist_depth")
    rows = []
    for row in r["rows"]:
        child = r["children"][row["run_id"]]["metrics"]
        last = 1.0 - child["train_accuracy"] if "train_accuracy" in child else None
        rows.append(
            [
                row["setting"],
                f"{int(child['params_total']):,}",
                _percent(row["train_error"]),
                _percent(row["val_error"]),
                _percent(last),
                row["epochs"],
            ]
        )
    header = (
        "model | parameters: | training error: | validation error: | training error, last epoch: | epochs:"
    )
    return markdown(header, rows, [r])


def _mean_spread(row: dict) -> str:
    """A summary row's test accuracy: mean +- standard deviation over its seeds, in percent."""
    return f"{100 * row['test_accuracy_mean']:.1f}% ± {100 * row['test_accuracy_std']:.1f}"


def transfer_split() -> str:
    """``benchmarks/study.py transfer --config pipelines/configs/transfer_fashion_split.yaml``:
    the modes at each target size, mean +- std over the seeds. The first run gave every mode the
    training section's patience of 5, which stopped scratch at chance at 5 per class and
    fine_tune early; ``study.mode_training`` now gives both patience 20, and each was rerun alone
    (``..._scratch.json``, ``..._fine_tune.json``). Both columns of each are shown; the gain is
    between the reruns."""
    r = _study("transfer", "transfer_fashion_split")
    reruns = {mode: _study("transfer", f"transfer_fashion_split_{mode}") for mode in ("fine_tune", "scratch")}
    cell = {(row["mode"], row["examples_per_class"]): row for row in r["tables"]["summary.csv"]}
    budget = {
        (mode, row["examples_per_class"]): row
        for mode, rerun in reruns.items()
        for row in rerun["tables"]["summary.csv"]
        if row["mode"] == mode
    }
    sizes = sorted({n for _, n in cell})
    frozen = ("feature_extraction", "shallow")
    rows = []
    for n in sizes:
        tuned, scratch = budget.get(("fine_tune", n)), budget.get(("scratch", n))
        gain = (
            f"**{100 * (tuned['test_accuracy_mean'] - scratch['test_accuracy_mean']):+.1f}**"
            if tuned and scratch
            else "n/a"
        )
        rows.append(
            [
                n,
                *(_mean_spread(cell[m, n]) if (m, n) in cell else "n/a" for m in frozen),
                *(
                    _mean_spread(row) if row else "n/a"
                    for mode in ("fine_tune", "scratch")
                    for row in (budget.get((mode, n)), cell.get((mode, n)))
                ),
                gain,
            ]
        )
    p = r["parent_metrics"]
    seeds = r["tables"]["summary.csv"][0]["seeds"]
    intro = (
        f"Source (classes 0-4, all their training images): {100 * p['source_test_accuracy']:.1f}% test "
        f"accuracy after {p['source_epochs']:.0f} epochs (early stopping). Target: classes 5-9, "
        f"{seeds} seeds per cell, mean ± standard deviation of the test accuracy on its 5,000 test images."
    )
    note = (
        "fine_tune and scratch each have two columns. Patience 20: `study.mode_training` (scratch also "
        "up to 140 epochs), as the config ships, each rerun alone with its own source training. "
        "Patience 5: the training section's, as the first run had every mode; at 5 per class (one "
        "optimizer step an epoch) it stopped scratch after 6-8 steps at chance. The last column is "
        "fine_tune minus scratch, both at patience 20."
    )
    header = (
        "examples per class: | feature_extraction: | shallow: | fine_tune (patience 20): "
        "| fine_tune (patience 5): | scratch (patience 20): | scratch (patience 5): "
        "| fine_tune - scratch (points):"
    )
    return markdown(header, rows, [r, *reruns.values()], intro=intro, note=note)


def transfer_layer_curve() -> str:
    """The same study's layer curve (Yosinski et al.): the first k blocks copied frozen from the
    source (AnB) or from a network trained on the target (BnB), the rest trained."""
    r = _study("transfer", "transfer_fashion_split")
    curve = r["tables"]["layer_curve_summary.csv"]
    cell = {(row["network"], row["copied_blocks"]): row for row in curve}
    blocks = sorted({row["copied_blocks"] for row in curve})
    rows = []
    for k in blocks:
        a, b = cell.get(("AnB", k)), cell.get(("BnB", k))
        gap = f"{100 * (a['test_accuracy_mean'] - b['test_accuracy_mean']):+.1f}" if a and b else "n/a"
        rows.append([k, _mean_spread(a) if a else "n/a", _mean_spread(b) if b else "n/a", gap])
    header = "blocks copied frozen: | AnB (from the source): | BnB (from the target): | AnB - BnB (points):"
    return markdown(header, rows, [r])


def _transfer_modes(r: dict, intro: str) -> str:
    """One transfer study's summary: a row per target size, a column per mode (the test accuracy,
    ± its standard deviation when the study ran several seeds), the best of each row in bold."""
    summary = r["tables"]["summary.csv"]
    cell = {(row["mode"], row["examples_per_class"]): row for row in summary}
    modes = list(dict.fromkeys(row["mode"] for row in summary))
    rows = []

    def accuracy(row) -> str:
        if row is None:
            return "n/a"
        return _mean_spread(row) if row["seeds"] > 1 else _percent(row["test_accuracy_mean"])

    sizes = sorted({n for _, n in cell}, key=lambda n: (n == "all", 0 if n == "all" else n))  # "all" last
    for n in sizes:
        present = {m: cell[m, n] for m in modes if (m, n) in cell}
        best = max(present, key=lambda m: present[m]["test_accuracy_mean"])
        texts = [accuracy(present.get(m)) for m in modes]
        rows.append([n, *(f"**{t}**" if m == best else t for m, t in zip(modes, texts))])
    return markdown("examples per class: | " + " | ".join(f"{m}:" for m in modes), rows, [r], intro=intro)


def _source_intro(r: dict, what: str) -> str:
    p = r["parent_metrics"]
    return (
        f"Source ({what}): {100 * p['source_test_accuracy']:.1f}% test accuracy after "
        f"{p['source_epochs']:.0f} epochs; target: OpenCV's handwritten digits."
    )


def transfer_far_domain() -> str:
    """``benchmarks/study.py transfer --config pipelines/configs/transfer_digits.yaml``:
    Fashion-MNIST's labels -> handwritten digits, the far-domain contrast."""
    r = _study("transfer", "transfer_digits")
    return _transfer_modes(r, _source_intro(r, "Fashion-MNIST, 10,000 labelled images"))


def transfer_pretext() -> str:
    """The same with ``--set study.source_task=pretext`` and the source cut to 2,500 images
    (``study_transfer_transfer_digits_pretext.json``): rotation labels instead of Fashion-MNIST's."""
    r = _study("transfer", "transfer_digits_pretext")
    return _transfer_modes(r, _source_intro(r, "rotations of 2,500 Fashion-MNIST images"))
