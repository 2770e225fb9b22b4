"""benchmarks/gpu.py and benchmarks/ladder_paper.py run where the GPU sessions run them
(benchmarks/device_session.sh): Keras on JAX, no TensorFlow or MLflow (and for gpu.py no cv2).
Here on the CPU with ``--tiny`` (narrow models, few steps), in a subprocess whose imports of
those packages fail, as on the device machine; torch is blocked too, so the torchvision peers
are skipped and the JSON must say why."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("jax", reason="jax[cpu] is a dev extra; the benchmark runs Keras on JAX")
pytestmark = pytest.mark.slow  # one JAX process building and compiling two models: ~1 min on 2 cores

ROOT = Path(__file__).resolve().parents[1]
# absent there (TensorFlow, cv2, MLflow), or not ours to need (Keras imports the rest only if present)
BLOCKED = (
    "tensorflow",
    "tf_keras",
    "cv2",
    "mlflow",
    "yaml",
    "pandas",
    "sklearn",
    "matplotlib",
    "torch",
    "torchvision",
)

# A meta-path finder that refuses the packages absent on the device machine (not
# sys.modules[name] = None: Keras tells a TF graph by "tensorflow" in sys.modules).
RUNNER = textwrap.dedent("""
    import importlib.abc, runpy, sys
    blocked = set(sys.argv[1].split(","))

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: absent on the GPU machine)")

    sys.meta_path.insert(0, Absent())
    script, sys.argv = sys.argv[2], sys.argv[2:]
    runpy.run_path(script, run_name="__main__")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
    assert not leaked, f"imported {leaked}"
    print("no blocked import")
""")


def run_benchmark(tmp_path, *args, backend="jax", script="gpu.py", blocked=BLOCKED):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-c", RUNNER, ",".join(blocked), str(ROOT / "benchmarks" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )


def test_tiny_run_without_tensorflow_or_torch(tmp_path):
    out = tmp_path / "gpu.json"
    done = run_benchmark(
        tmp_path, "--tiny", "--models", "vgg16,fcn8s", "--steps", "2", "--warmup", "1", "--out", str(out)
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no blocked import" in done.stdout
    result = json.loads(out.read_text())
    assert result["benchmark"] == "gpu" and result["backend"] == "jax"
    assert result["devices"]["jax"].startswith("cpu") and result["devices"]["torch"] is None
    assert result["peer_available"] is False and "torch" in result["peer_unavailable_reason"]
    assert result["settings"]["tiny"] is True and result["settings"]["modes"] == ["inference", "train"]
    assert [row["model"] for row in result["results"]] == ["vgg16", "fcn8s"]
    for row in result["results"]:
        assert row["peer"] is None and "torch" in row["peer_skipped"], row
        assert row["ratio_ours_over_peer"] == {}
        assert row["ours"]["params"] > 0
        for mode in ("inference", "train"):
            timing = row["ours"][mode]
            assert "error" not in timing, timing
            assert timing["images_per_s"] > 0 and timing["steps_timed"] == 2
            assert timing["median_step_ms"] >= timing["min_step_ms"] > 0
    assert result["results"][1]["task"] == "segmentation"
    # the printed table has a row per model
    table = done.stdout[done.stdout.index("model ") :]
    assert "vgg16" in table and "fcn8s" in table


def test_refuses_another_backend_and_unknown_models(tmp_path):
    done = run_benchmark(tmp_path, "--tiny", "--models", "vgg16", backend="tensorflow")
    assert done.returncode == 2 and "KERAS_BACKEND=jax" in done.stderr
    done = run_benchmark(tmp_path, "--tiny", "--models", "alexnet")
    assert done.returncode == 2 and "unknown models" in done.stderr


def test_tiny_paper_ladder_on_jax_without_tensorflow(tmp_path):
    """The whole ladder on JAX: R-CNN's and SPP-net's NumPy-side heads take the NumPy NMS, the
    two-stage networks (RoI pooling, the RPN's proposals) run in keras.ops; selective search
    needs cv2 with the contrib modules (carried to the GPU machine as a wheel)."""
    pytest.importorskip("cv2.ximgproc", reason="opencv-contrib gives selective search")
    out = tmp_path / "ladder_paper_gpu.json"
    blocked = ("tensorflow", "tf_keras", "mlflow", "torch", "torchvision")
    done = run_benchmark(
        tmp_path,
        "--tiny",
        "--photos",
        "messi5.jpg,fruits.jpg",
        "--rcnn-warps",
        "0",
        "--out",
        str(out),
        script="ladder_paper.py",
        blocked=blocked,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no blocked import" in done.stdout
    result = json.loads(out.read_text())
    assert (result["backend"], result["accelerator"], result["tiny"]) == ("jax", "cpu", True)
    rows = {row["rung"]: row for row in result["rows"]}
    assert list(rows) == ["rcnn", "sppnet", "fast_rcnn", "faster_rcnn", "yolo", "ssd300"]
    for name in ("rcnn", "sppnet", "fast_rcnn"):
        assert rows[name]["proposals"] > 0 and rows[name]["proposal_ms"] > 0, rows[name]
    assert rows["rcnn"]["speedup_vs_rcnn"] == 1.0 and rows["faster_rcnn"]["speedup_vs_rcnn"] > 1.0
