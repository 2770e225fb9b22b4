"""The CPU benchmarks run on tiny settings and write their JSON with its provenance: a benchmark
that no test runs rots (data_pipeline.py broke once when the model config moved its dropout)."""

import json
import sys
from pathlib import Path

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
    study.main(
        [
            "depth",
            *("--config", str(ROOT / "pipelines/configs/shapes_classification.yaml")),
            *("--set", "data.train_size=48", "--set", "data.val_size=16", "--set", "data.test_size=16"),
            *("--set", f"data.data_dir={tmp_path / 'data'}", "--set", "training.epochs=1"),
            *("--set", "study.depth_models=[plain18,resnet18]", "--set", "model.width=0.25"),
            *("--out", str(out)),
        ]
    )
    result = json.loads(out.read_text())
    assert result["study"] == "depth" and result["table_artifact"] == "results.csv"
    assert [r["setting"] for r in result["rows"]] == ["plain18", "resnet18"]
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
