"""The executed tutorials in docs/tutorials/: each notebook runs end to end on tiny settings
(``CNN_APPS_TUTORIAL_TINY=1``, with nbclient, from the repository root) without a cell error,
and the committed copy carries the outputs of its full run (the site renders the stored
outputs, it does not execute the notebooks): at least one image, no error."""

from pathlib import Path

import pytest

from cnn_apps.data.sources import FASHION_MNIST_DIR
from cnn_apps.data.sources.digits import OPENCV_DIGITS_PATH

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
NOTEBOOKS = ["bias_variance", "transfer_learning", "detector_lineage", "fcn_skips"]
# the local data sets a tutorial reads (CI installs them; a missing one is a failure, not a skip)
NEEDS = {
    "bias_variance": [FASHION_MNIST_DIR],
    "transfer_learning": [FASHION_MNIST_DIR, OPENCV_DIGITS_PATH],
}
CELL_TIMEOUT_S = 300


def _read(name: str):
    import nbformat

    path = TUTORIALS / f"{name}.ipynb"
    assert path.is_file(), f"{path} is missing"
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_carries_its_outputs(name):
    """The site shows what is stored: every code cell ran, in order, with no error, and the
    run left at least one plot."""
    nb = _read(name)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{name}: no code cells"
    counts = [cell.get("execution_count") for cell in code]
    assert all(counts), f"{name}: a code cell was never executed (execution counts {counts})"
    assert counts == sorted(counts), f"{name}: cells were executed out of order ({counts})"
    outputs = [out for cell in code for out in cell.get("outputs", [])]
    errors = [out for out in outputs if out.get("output_type") == "error"]
    assert not errors, f"{name}: stored error output {errors[0].get('ename')}: {errors[0].get('evalue')}"
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert images, f"{name}: no image output stored; execute it with its full settings and save it"
    sources = "\n".join(cell.source for cell in nb.cells)
    assert "WHAT_IT_SHOWS" not in sources, f"{name}: the 'What it shows' section is unwritten"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_on_tiny_settings(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    missing = [path for path in NEEDS.get(name, []) if not Path(path).exists()]
    if missing:
        pytest.fail(
            f"{name} needs {', '.join(missing)}: install Debian's dataset-fashion-mnist and "
            "opencv-doc (.ci/run does)"
        )
    nb = _read(name)
    for cell in nb.cells:  # a working copy, run afresh: the stored outputs are not under test here
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    monkeypatch.setenv("CNN_APPS_TUTORIAL_TINY", "1")
    monkeypatch.setenv("CNN_APPS_OFFLINE", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's own temporary folder goes here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        # TensorFlow's C++ start-up lines go to the kernel's stderr, not into the cells
        extra_arguments=["--IPKernelApp.capture_fd_output=False"],
        resources={"metadata": {"path": str(ROOT)}},
    )
    try:
        client.execute()  # raises CellExecutionError, naming the cell and its traceback, on any error
    finally:
        nbformat.write(nb, tmp_path / f"{name}.ipynb")  # the executed copy, to read after a failure
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{name} drew no plot"
