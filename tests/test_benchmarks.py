"""The CPU benchmarks run on tiny settings and write their JSON with its provenance: a benchmark
that no test runs rots (data_pipeline.py broke once when the model config moved its dropout)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_data_pipeline_benchmark_measures_a_ratio(tmp_path, monkeypatch):
    import data_pipeline

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "data_pipeline.json"
    data_pipeline.main(
        [
            *("--set", "data.train_size=64", "--set", "data.val_size=16", "--set", "data.test_size=16"),
            *("--set", f"data.data_dir={tmp_path / 'data'}", "--batches", "2", "--output", str(out)),
        ]
    )
    result = json.loads(out.read_text())
    assert json.loads(out.read_text())["provenance"]["machine"]["cores"] >= 1
    assert result["pipeline_warm_images_per_s"] > 0 and result["train_step_images_per_s"] > 0
    expected = result["pipeline_warm_images_per_s"] / result["train_step_images_per_s"]
    assert abs(result["ratio_pipeline_to_train"] - expected) < 0.01 * expected + 0.01


def test_study_benchmark_keeps_the_table_and_child_runs(tmp_path, monkeypatch):
    import study

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "study.json"

    def run(*models, store=()):
        study.main(
            [
                "depth",
                *("--config", str(ROOT / "pipelines/configs/shapes_classification.yaml")),
                *("--set", "data.train_size=48", "--set", "data.val_size=16", "--set", "data.test_size=16"),
                *("--set", f"data.data_dir={tmp_path / 'data'}", "--set", "training.epochs=1"),
                *("--set", f"study.depth_models=[{','.join(models)}]", "--set", "model.width=0.25"),
                *("--out", str(out), *store),
            ]
        )
        return json.loads(out.read_text())

    result = run("plain18", "resnet18", store=("--store", str(tmp_path / "store")))
    assert result["study"] == "depth" and result["table_artifact"] == "results.csv"
    assert [r["setting"] for r in result["rows"]] == ["plain18", "resnet18"]
    # a second call in the same kept store reports its own study, not the first one
    second = run("resnet18", store=("--store", str(tmp_path / "store")))
    assert [r["setting"] for r in second["rows"]] == ["resnet18"]
    assert second["parent_run"] != result["parent_run"] and (tmp_path / "store" / "mlflow.db").is_file()
    # each table row is one child run, whose own metrics agree with the row
    for row in result["rows"]:
        child = result["children"][row["run_id"]]
        assert child["setting"] == row["setting"]
        assert abs(child["metrics"]["val_error"] - row["val_error"]) < 1e-4


def test_cpu_benchmark_runs_ours_at_both_precisions_without_a_peer(tmp_path):
    import cpu

    out = tmp_path / "cpu.json"
    result = cpu.main(
        ["--tiny", "--no-peer", "--models", "resnet50", "--steps", "1", "--warmup", "1", "--out", str(out)]
    )
    assert [(r["model"], r["precision"]) for r in result["rows"]] == [
        ("resnet50", "float32"),
        ("resnet50", "bfloat16"),
    ]
    for row in result["rows"]:
        assert row["peer_error"] == "--no-peer" and row["ours"]["params"] > 0
        for mode in ("inference", "train"):
            assert row[mode]["ours"]["images_per_s"] > 0 and "ratio_theirs_time_over_ours" not in row[mode]
    assert json.loads(out.read_text())["provenance"]["machine"]["cores"] >= 1


def test_paper_ladder_input_keeps_the_aspect_at_a_600_px_shorter_side():
    """A VOC-sized 4:3 photo (375 x 500) goes to 600 x 800 at the top-left of an 800 px square,
    the rest zeros; boxes scale by the same factor (1.6)."""
    import ladder_paper
    import numpy as np

    photo = np.full((375, 500, 3), 200, np.uint8)
    canvas, scale = ladder_paper.network_input(photo, 600, 800)
    assert canvas.shape == (800, 800, 3) and scale == 1.6
    assert (canvas[:600, :800] == 200).all() and (canvas[600:] == 0).all()
    tall = np.full((500, 300, 3), 50, np.uint8)  # 600 px short side would make it 1000 tall: capped
    canvas, scale = ladder_paper.network_input(tall, 600, 800)
    assert scale == 1.6 and (canvas[:800, :480] == 50).all() and (canvas[:, 480:] == 0).all()


def test_paper_ladder_times_every_rung_on_a_photo(tmp_path):
    """Tiny VGG, one OpenCV sample photo: every rung timed with its parts, the proposal rungs on
    the same selective-search boxes, R-CNN's network time scaled from the warps it timed."""
    import ladder_paper

    out = tmp_path / "ladder_paper.json"
    result = ladder_paper.main(["--tiny", "--photos", "messi5.jpg", "--rcnn-warps", "8", "--out", str(out)])
    rows = {r["rung"]: r for r in result["rows"]}
    assert list(rows) == list(ladder_paper.RUNGS)
    counts = {rows[k]["proposals"] for k in ("rcnn", "sppnet", "fast_rcnn")}
    assert len(counts) == 1 and counts.pop() > 8  # more proposals than R-CNN timed warps for
    assert rows["faster_rcnn"]["proposals"] == result["settings"]["rpn_post_nms"]
    for row in rows.values():  # one photo, one round: the median call is that call
        parts = row["proposal_ms"] + row["network_ms"] + row["post_ms"]
        assert abs(row["ms_per_image"] - parts) < 0.05 and row["network_ms"] > 0
        assert row["speedup_vs_rcnn"] > 0 and row["paper_ms"] > 0
    assert rows["rcnn"]["speedup_vs_rcnn"] == 1.0 and rows["faster_rcnn"]["course_speedup"] == 250.0
    assert rows["yolo"]["proposal_ms"] == 0 and rows["faster_rcnn"]["proposal_ms"] == 0
    assert rows["rcnn"]["macs_ratio_vs_rcnn"] == 1.0
    for row in rows.values():  # R-CNN's multiply-adds grow with its proposals: the most of any rung
        assert 0 < row["gmacs"] <= rows["rcnn"]["gmacs"] or row["rung"] == "ssd300"
        assert row["macs_ratio_vs_rcnn"] == pytest.approx(rows["rcnn"]["gmacs"] / row["gmacs"], rel=0.01)
    assert json.loads(out.read_text())["provenance"]["machine"]["cores"] >= 1


@pytest.mark.slow
def test_pointwise_conv_benchmark_times_the_whole_network_both_ways():
    import pointwise_conv

    net = pointwise_conv.resnet50_steps(batch=2, steps=1, size=64)
    assert net["model"] == "resnet50_v1_5" and net["steps"] == 1 and net["image_size"] == 64
    keras_ms, ours_ms = net["keras_step_ms"], net["cnn_apps_step_ms"]
    assert keras_ms > 0 and ours_ms > 0
    assert net["keras_over_cnn_apps"] == pytest.approx(keras_ms / ours_ms, abs=0.01)


def test_fold_batch_norm_benchmark_times_both_and_checks_they_agree(tmp_path):
    import fold_batch_norm

    out = tmp_path / "fold_batch_norm.json"
    args = ["--size", "32", "--batch", "2", "--steps", "1", "--precision", "float32", "--out", str(out)]
    (row,) = fold_batch_norm.main(args)["rows"]
    assert row["batch_norms_folded"] == 53  # every batch norm of ResNet-50 follows a convolution
    assert row["max_logit_difference"] < 1e-4 * max(row["max_logit"], 1.0)
    assert row["unfolded_over_folded"] == pytest.approx(row["unfolded_ms"] / row["folded_ms"], abs=0.01)
    assert json.loads(out.read_text())["provenance"]["machine"]["cores"] >= 1


def _vgg16_conv_macs(side: int) -> int:
    """VGG-16's 13 3x3 convolutions (to block5_conv3) on a side x side image, by hand."""
    blocks = [(3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3)]
    total = 0
    for b, (c_in, c_out, n) in enumerate(blocks):
        pixels = (side // 2**b) ** 2
        total += pixels * 9 * (c_in * c_out + (n - 1) * c_out * c_out)
    return total


def test_paper_ladder_counts_the_multiply_adds_the_papers_count():
    """R-CNN's network per warp is VGG-16's convolutions (its features are the pooled conv5, 512-d):
    with fc6 / fc7 / fc8 added it is torchvision's 15.47 GFLOPs (multiply-adds) for vgg16;
    Faster R-CNN at 800 px by hand: conv5, the RPN's 3x3 conv and 1x1 heads over 50 x 50, and
    fc6 / fc7 / the class and box layers on 300 RoIs."""
    import ladder_paper

    from cnn_apps.backbones.flops import count_macs

    s = ladder_paper.settings(tiny=False)
    detector = ladder_paper.region_rung("rcnn", s)
    per_warp = count_macs(detector._feature_model)
    assert per_warp == _vgg16_conv_macs(224)
    fc = 512 * 7 * 7 * 4096 + 4096 * 4096 + 4096 * 1000
    assert (per_warp + fc) / 1e9 == pytest.approx(15.47, abs=0.01)  # torchvision's vgg16
    _, network = ladder_paper.keras_rung("faster_rcnn", s)
    grid, rois, k = 800 // 16, s["rpn_post_nms"], ladder_paper.NUM_CLASSES + 1
    rpn = grid * grid * 512 * (9 * 512 + 9 + 9 * 4)  # 3x3 conv, then objectness and deltas per anchor
    head = rois * (512 * 7 * 7 * 4096 + 4096 * 4096 + 4096 * (k + 4 * ladder_paper.NUM_CLASSES))
    by_hand = _vgg16_conv_macs(800) + rpn + head
    assert count_macs(network, unknown_rows=rois) == pytest.approx(by_hand, rel=0.001)


def test_batch_norm_benchmark_times_keras_against_the_fused_kernel(tmp_path):
    import batch_norm

    out = tmp_path / "batch_norm.json"
    result = batch_norm.main(
        ["--shapes", "1", "--steps", "2", "--batch", "2", "--precision", "float32", "--out", str(out)]
    )
    (row,) = result["rows"]
    assert row["shape"] == [112, 112, 64] and row["count_in_resnet50"] == 1
    assert (
        abs(row["keras_over_tf_fused"] - row["keras_ms"] / row["tf_fused_ms"])
        < 0.01 + 0.01 * row["keras_over_tf_fused"]
    )
    assert result["totals"]["float32_keras_ms_per_resnet50_step"] == round(row["keras_ms"], 1)
    assert result["totals"]["float32_cnn_apps_ms_per_resnet50_step"] == round(row["cnn_apps_ms"], 1)
    assert row["cnn_apps_fused"]  # our layer timed its fused path, not its fall-back to Keras' ops
    assert json.loads(out.read_text())["provenance"]["machine"]["cores"] >= 1


def test_pointwise_conv_benchmark_times_resnet50s_1x1_convolutions(tmp_path):
    import pointwise_conv

    shapes = pointwise_conv.resnet50_pointwise_shapes()
    # resnet50_v1_5: 16 bottlenecks with two 1x1 stride-1 convolutions each + conv2's projection
    assert sum(count for *_, count in shapes) == 33 and shapes[0] == (56, 64, 64, 1)
    out = tmp_path / "pointwise_conv.json"
    result = pointwise_conv.main(
        ["--shapes", "1", "--steps", "2", "--batch", "2", "--network-steps", "0", "--out", str(out)]
    )
    (row,) = result["rows"]
    assert (row["height"], row["channels"], row["filters"], row["count_in_resnet50"]) == (56, 64, 64, 1)
    assert row["cnn_apps_matmul_grad"]  # our layer timed its matmul gradient, not Keras' convolution
    ratio = row["keras_over_cnn_apps"]
    assert abs(ratio - row["keras_ms"] / row["cnn_apps_ms"]) < 0.01 + 0.01 * ratio
    assert result["totals"]["cnn_apps_ms_per_resnet50_step"] == round(row["cnn_apps_ms"], 1)
    assert result["network"] is None  # --network-steps 0: no whole-network timing
    assert json.loads(out.read_text())["provenance"]["machine"]["cores"] >= 1


def test_demo_time_splits_the_pipeline_by_the_stage_runs_it_logged(tmp_path):
    """demo_time.py times each stage from the end of the previous stage's run to the end of its
    own (evaluate and export work before opening their runs), the first from the launch; runs of
    other stages or still running are left out."""
    import mlflow
    from demo_time import stage_seconds

    (tmp_path / "mlruns").mkdir()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.create_experiment("classification")
    # (stage, start, end) in ms; the evaluate run opens long after train ended, as the stage does
    spans = [("train", 3_000, 61_500), ("prepare", 1_500, 2_500), ("evaluate", 69_900, 70_000)]
    spans += [("study", 500, 9_000), ("export", 71_000, None)]
    for stage, start, end in spans:
        run = client.create_run(experiment, start_time=start, tags={"stage": stage})
        if end is not None:
            client.set_terminated(run.info.run_id, end_time=end)
    got = stage_seconds(tmp_path, started_ms=500)
    assert list(got) == ["prepare", "train", "evaluate"]
    assert got == {"prepare": 2.0, "train": 59.0, "evaluate": 8.5}


def test_provenance_calls_a_tree_dirty_for_code_changes_not_for_rewritten_results():
    """A queue of benchmarks rewrites tracked result files as it goes; the next benchmark's stamp
    stays the clean commit, while any change outside benchmarks/results/ marks it dirty."""
    import subprocess

    from provenance import commit

    clean = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True
    )
    result, code = ROOT / "benchmarks" / "results" / "cpu.json", ROOT / "benchmarks" / "README.md"
    if not code.exists():
        code = ROOT / "README.md"
    saved = {path: path.read_bytes() for path in (result, code)}
    try:
        result.write_bytes(saved[result] + b"\n")
        stamp = commit()
        if not clean.stdout.strip():  # a clean checkout (CI's clone): the result file alone
            assert len(stamp) == 40 and not stamp.endswith("-dirty"), stamp
        code.write_bytes(saved[code] + b"\n")
        assert commit().endswith("-dirty")
    finally:
        for path, content in saved.items():
            path.write_bytes(content)
