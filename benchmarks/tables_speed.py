"""Result tables of the speed benchmarks: backbones and detectors against their peers, the input
pipeline, the CPU against torchvision and the detector ladder (trained, and at the papers'
scale)."""

from __future__ import annotations

from pathlib import Path

from table_blocks import _name, load, markdown


def backbone_speed() -> str:
    """``benchmarks/backbones.py``: our VGG-16 and ResNet-50 against keras.applications'."""
    r = load("backbones")
    rows = [
        [
            f"`{row['model']}`",
            f"{row['params_ours']:,} ({'yes' if row['params_ours'] == row['params_keras'] else 'NO'})",
            f"{row['ours_infer_images_per_s']:.1f}",
            f"{row['infer_ratio']:.2f}x",
            f"{row['ours_train_images_per_s']:.1f}",
            f"{row['train_ratio']:.2f}x",
        ]
        for row in r["results"]
    ]
    intro = (
        f"{r['backend']}, {r['image_size']} px, batch {r['batch_size']}, medians of {r['rounds']} rounds; "
        "ratio = ours / theirs in images/s:"
    )
    header = "model | parameters (ours = theirs): | inference img/s: | ratio: | training img/s: | ratio:"
    return markdown(header, rows, [r], intro=intro)


def detector_speed() -> str:
    """``benchmarks/detectors.py``: detect (network, decoding, NMS) with TF's NMS and the portable one."""
    r = load("detectors")
    rows = [
        [
            _name(row["model"]),
            f"{row['params']:,}",
            row["boxes_before_nms"],
            impl,
            f"{m['latency_ms']:.1f} ms",
            f"{m['images_per_s']:,.0f}",
            f"{100 * m['nms_share_latency']:.0f}%",
        ]
        for row in r["results"]
        for impl, m in row["implementations"].items()
    ]
    header = (
        "model | params: | boxes before NMS: | NMS | latency (batch 1): | img/s (batch 16): "
        "| NMS share of latency:"
    )
    return markdown(header, rows, [r])


def data_pipeline() -> str:
    """``benchmarks/data_pipeline.py`` (``make bench``): input throughput against the train step's."""
    r = load("data_pipeline")
    row = [
        f"`{Path(r['config']).name}`",
        f"{r['pipeline_cold_images_per_s']:,.0f} img/s",
        f"{r['pipeline_warm_images_per_s']:,.0f} img/s",
        f"{r['train_step_images_per_s']:,.0f} img/s",
        f"{r['ratio_pipeline_to_train']:.1f}x",
    ]
    header = (
        "config | first epoch (read, decode, cache): | warm pipeline: | train step: | pipeline / train step:"
    )
    return markdown(header, [row], [r])


def cpu_peers() -> str:
    """``benchmarks/cpu.py``: ours against torchvision on this CPU; ratio = their time / ours
    (> 1: ours is faster)."""
    r = load("cpu")

    def side(row, mode, who):
        cell = row.get(mode, {}).get(who)
        return "n/a" if not cell else f"{cell['images_per_s']:,.1f}"

    def ratio(row, mode):
        value = row.get(mode, {}).get("ratio_theirs_time_over_ours")
        return "n/a" if value is None else f"**{value:.2f}x**"

    rows = [
        [
            row["model"],
            row["precision"],
            f"{row['image_size']} px, {row['batch_size']}",
            *(
                f(row, mode)
                for mode in ("inference", "train")
                for f in (lambda x, m: side(x, m, "ours"), lambda x, m: side(x, m, "theirs"), ratio)
            ),
        ]
        for row in r["rows"]
    ]
    v = r["versions"]
    note = (
        f"TensorFlow {v['tensorflow']} (oneDNN), Keras {v['keras']}; torch {v['torch']}, torchvision "
        f"{v['torchvision']}; {r['cores']} cores, bfloat16 instructions: "
        f"{', '.join(r['bf16_instructions']) or 'none'}; {r['steps']} alternating timed steps a side."
    )
    header = (
        "model | precision | input, batch | inference img/s: ours: | torchvision: | ratio: "
        "| training img/s: ours: | torchvision: | ratio:"
    )
    return markdown(header, rows, [r], note=note)


def ladder_timing() -> str:
    """``benchmarks/ladder.py --study <the ladder study>``: the trained ladder timed side by side."""
    r = load("ladder")
    rows = []
    for row in r["detectors"]:
        course = row.get("course") or {}
        rows.append(
            [
                _name(row["detector"]),
                f"{row['ms_per_image']:.1f}",
                f"{row['p90_ms']:.1f}",
                ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in row["parts_ms"].items()) or "-",
                f"{row['speedup_vs_first']:.1f}x",
                f"{course['seconds_per_image']:g} s, {course['speedup']}x" if course else "",
                f"{course['ratio_measured_over_course_speedup']:.3f}" if course else "",
            ]
        )
    peer = r.get("peer")
    note = (
        f"Peer: torchvision's Faster R-CNN {peer['ms_per_image']:.1f} ms per image; ours / torchvision "
        f"{peer['ratio_ms_ours_over_peer']:.2f}x."
        if peer
        else 'Peer: torchvision was not installed for this run (`"peer": null`).'
    )
    header = (
        "detector | ms per image: | p90: | parts (ms) | speed-up: | course: | measured / course speed-up:"
    )
    return markdown(header, rows, [r], note=note)


K40_RUNGS = ("rcnn", "sppnet", "fast_rcnn", "faster_rcnn")  # the papers timed these on one GPU model


def ladder_paper() -> str:
    """``benchmarks/ladder_paper.py``: the ladder at its papers' scale, random weights."""
    r = load("ladder_paper")
    rows = []
    for row in r["rows"]:
        course = row.get("course_speedup")
        rows.append(
            [
                _name(row["rung"]),
                f"{row['ms_per_image']:,.0f}",
                f"{row['proposal_ms']:,.0f}" if row["proposal_ms"] else "-",
                f"{row['network_ms']:,.0f}",
                f"{row['post_ms']:,.0f}",
                f"{row['proposals']:,.0f}" if row["proposals"] else "-",
                f"**{row['speedup_vs_rcnn']:.1f}x**",
                f"{row['gmacs']:,.0f}",
                f"{row['macs_ratio_vs_rcnn']:.1f}x",
                f"{row['network_gmacs_per_s']:,.0f}",
                f"{course:g}x" if course else "",
                f"{row['paper_ms']:,.0f} ms"
                + (f", {row['paper_speedup_vs_rcnn']:.0f}x" if row["rung"] in K40_RUNGS else ""),
            ]
        )
    s = r["settings"]
    goals = ", ".join(
        f"{_name(k)} >= {v:g}x ({'met' if by[k] >= v else 'missed'}: {by[k]:.1f}x)"
        for by in [{row["rung"]: row["speedup_vs_rcnn"] for row in r["rows"]}]
        for k, v in r["goals"].items()
        if k in by
    )
    note = (
        f"{len(r['photos'])} photos ({', '.join(r['photos'])}), {r['rounds']} timed pass(es) after a "
        f"warm-up, medians; {r['precision']}; up to {s['max_proposals']:,} selective-search proposals "
        f"(fast mode); R-CNN's network timed on {r['rcnn_warps_timed']} warps per photo and scaled to "
        "its proposals. GMAC: multiply-adds of the networks and the SVM / box heads (not selective "
        "search); arithmetic vs R-CNN: the speed-up at equal GMAC/s; GMAC/s: over network and "
        "post-processing time. Paper column: each paper's own GPU figure (R-CNN to Faster R-CNN on a K40, "
        f"so their speed-ups compare; YOLO and SSD on a Titan X). Goals on this CPU: {goals}."
    )
    header = (
        "rung | ms per image: | proposals: | network: | post-processing: | boxes: | vs R-CNN: "
        "| GMAC per image: | arithmetic vs R-CNN: | GMAC/s: | course: | paper (GPU):"
    )
    return markdown(header, rows, [r], note=note)


def pointwise_conv() -> str:
    """``benchmarks/pointwise_conv.py``: a bfloat16 training step of ResNet-50's 1x1 convolutions."""
    r = load("pointwise_conv")
    sides = [s for s in ("keras", "cnn_apps", "torch") if all(f"{s}_ms" in row for row in r["rows"])]
    rows = [
        [
            f"{row['height']} x {row['height']}",
            f"{row['channels']} -> {row['filters']}",
            row["count_in_resnet50"],
            *(f"{row[f'{s}_ms']:.2f}" for s in sides),
            *(f"{row[f'keras_over_{s}']:.1f}x" for s in sides if s != "keras"),
        ]
        for row in r["rows"]
    ]
    totals = r["totals"]
    note = (
        f"Summed over ResNet-50's {sum(row['count_in_resnet50'] for row in r['rows'])} such convolutions "
        f"(the count column), one {r['precision']} training step at batch {r['batch']}: "
        + ", ".join(f"{s} {totals[f'{s}_ms_per_resnet50_step']:,.0f} ms" for s in sides)
        + "."
    )
    net = r.get("network")
    if net:
        note += (
            f" The whole {net['model']} training step ({net['image_size']} px, batch {net['batch']}, "
            f"medians of {net['steps']} alternating steps): Keras' convolution "
            f"{net['keras_step_ms']:,.0f} ms, ours {net['cnn_apps_step_ms']:,.0f} ms "
            f"({net['keras_over_cnn_apps']:.2f}x)."
        )
    header = "activation | channels | in ResNet-50: | " + " | ".join(f"{s} ms:" for s in sides)
    header += "".join(f" | keras / {s}:" for s in sides if s != "keras")
    return markdown(header, rows, [r], note=note)


def fold_batch_norm() -> str:
    """``benchmarks/fold_batch_norm.py``: ResNet-50 inference with batch norm as it is and folded."""
    r = load("fold_batch_norm")
    rows = [
        [
            row["precision"],
            f"{row['image_size']} px, {row['batch']}",
            row["batch_norms_folded"],
            f"{row['unfolded_ms']:,.1f}",
            f"{row['folded_ms']:,.1f}",
            f"**{row['unfolded_over_folded']:.2f}x**",
            f"{row['max_logit_difference']:.2g} of {row['max_logit']:.3g}",
        ]
        for row in r["rows"]
    ]
    header = (
        "precision | input, batch | batch norms folded: | unfolded ms: | folded ms: | speed-up: "
        "| largest logit difference:"
    )
    return markdown(header, rows, [r], note=f"Medians of {r['steps']} alternating `predict_on_batch` calls.")


def demo_time() -> str:
    """``benchmarks/demo_time.py``: ``make demo`` from a fresh clone, by part and stage."""
    r = load("demo_time")
    stages = r["stage_seconds"]
    rows = [["`make install` (virtual environment, package)", f"{r['install_seconds']:,.0f} s"]]
    rows += [[f"`make demo`: {stage}", f"{seconds:,.0f} s"] for stage, seconds in stages.items()]
    rest = r["pipeline_seconds"] - sum(stages.values())
    rows.append(["`make demo`: the summary and exit", f"{rest:,.0f} s"])
    rows.append(["**total**", f"**{r['total_seconds'] / 60:.1f} min**"])
    note = f"pip's download cache was {r['pip_cache']}" + (
        ": the wheels were already on the machine, and a first install also downloads them."
        if r["pip_cache"] == "warm"
        else "."
    )
    return markdown("step | time:", rows, [r], note=note)


def batch_norm() -> str:
    """``benchmarks/batch_norm.py``: one training step of batch norm alone at ResNet-50's shapes."""
    r = load("batch_norm")
    # torch's BatchNorm2d alone is in the JSON but not shown: timed this way its sum over the 53
    # layers exceeds torch's whole ResNet-50 step in cpu.py, so it does not show what its network does
    sides = [s for s in ("keras", "cnn_apps", "tf_fused") if all(f"{s}_ms" in row for row in r["rows"])]
    rows = [
        [
            row["precision"],
            " x ".join(str(d) for d in row["shape"]),
            row["count_in_resnet50"],
            *(f"{row[f'{s}_ms']:.2f}" for s in sides),
            *(f"{row[f'keras_over_{s}']:.1f}x" for s in sides if s != "keras"),
        ]
        for row in r["rows"]
    ]
    totals = r["totals"]
    note = "Summed over ResNet-50's 53 batch norms (the count column), one training step at batch " + (
        f"{r['batch']}: "
        + "; ".join(
            f"{p}: " + ", ".join(f"{s} {totals[f'{p}_{s}_ms_per_resnet50_step']:,.0f} ms" for s in sides)
            for p in dict.fromkeys(row["precision"] for row in r["rows"])
        )
        + "."
    )
    header = "precision | activation (H x W x C) | in ResNet-50: | " + " | ".join(f"{s} ms:" for s in sides)
    header += "".join(f" | keras / {s}:" for s in sides if s != "keras")
    return markdown(header, rows, [r], note=note)
