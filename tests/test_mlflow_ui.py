"""The MLflow UI as a user sees it: headless Chromium (Debian's `chromium`, driven by Playwright)
opens the runs of the tiny pipeline on a real tracking server (the session fixture of
test_tracking_server.py: the pipeline runs once for both files) and checks that the run, its
metrics and a logged plot are shown. Screenshots go to $CNN_APPS_TEST_ARTIFACTS (default
tests/artifacts/), kept as test artifacts."""

import os
import shutil
import struct
from pathlib import Path

import pytest
from mlflow_server import pipeline_on_server

ROOT = Path(__file__).resolve().parents[1]


def find_chromium() -> str | None:
    """$CHROMIUM, else Debian's chromium (apt-get install chromium), else another Chrome on PATH."""
    candidates = [
        os.environ.get("CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium found (apt-get install chromium, or set CHROMIUM "
        "to a Chrome/Chromium binary); .ci/run installs it",
    ),
]


def artifacts_dir() -> Path:
    path = Path(os.environ.get("CNN_APPS_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def on_server(request, tmp_path_factory):
    return pipeline_on_server(request, tmp_path_factory)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import (
        sync_playwright,
    )  # the dev extra; no `playwright install`: Debian's chromium

    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start; a container's
        # /dev/shm is often too small for it
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)  # a 2-core machine under a test run renders slowly
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:  # what the page showed when the test failed
        page.screenshot(path=str(artifacts_dir() / f"{request.node.name}-failed.png"))
    context.close()


def open_run(page, server_url: str, run, tab: str = "") -> None:
    """The run page (MLflow 3's hash route), once its name is on screen; the assistant panel
    that opens beside it is closed so that screenshots show the run."""
    url = f"{server_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}{tab}"
    page.goto(url)
    page.get_by_role("heading", name=run.info.run_name).wait_for()
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def metric_shown(page, key: str) -> float:
    """Type the metric's name in the run page's metric search and read the value in its row."""
    page.get_by_placeholder("Search metrics").fill(key)
    rows = page.get_by_role("row").filter(has_text=key)  # val_loss also finds best_val_loss
    rows.first.wait_for()
    for row in rows.all():
        cells = [c.strip() for c in row.inner_text().split("\n") if c.strip()]
        if cells and cells[0] == key:
            return float(cells[1])
    raise AssertionError(f"no row for metric {key}: {rows.all_inner_texts()}")


def settle(page) -> None:
    """Let the page's remaining requests finish (loading placeholders) before a screenshot."""
    from playwright.sync_api import TimeoutError

    try:
        page.wait_for_load_state("networkidle", timeout=3_000)
    except TimeoutError:
        pass  # something keeps polling: take the screenshot as it is


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_ui_shows_the_train_run_its_metrics_and_learning_curves(on_server, page, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(on_server.server.url)
    train = client.get_run(on_server.runs["train"])
    open_run(page, on_server.server.url, train)
    assert train.info.run_name == "train:resnet_mini:shapes"
    body = page.inner_text("body")
    assert train.info.run_id in body and "Finished" in body
    assert metric_shown(page, "val_loss") == pytest.approx(train.data.metrics["val_loss"], rel=1e-6)
    page.get_by_role("link", name="tiny").first.wait_for()  # the registered model the export made
    settle(page)
    page.screenshot(path=str(artifacts_dir() / "mlflow_ui_train_run.png"))

    # the Artifacts tab, then the plot in its file tree, as a user clicks them
    page.get_by_role("tab", name="Artifacts").or_(page.get_by_text("Artifacts", exact=True)).first.click()
    with page.expect_response(lambda r: "get-artifact" in r.url and "learning_curves.png" in r.url) as got:
        page.get_by_text("learning_curves.png", exact=True).first.click()
    response = got.value
    assert response.status == 200
    img = page.locator("img[src^='blob:']").locator("visible=true").first
    img.wait_for()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    shown = page.evaluate("(img) => [img.naturalWidth, img.naturalHeight]", img.element_handle())
    logged = Path(client.download_artifacts(train.info.run_id, "learning_curves.png", str(tmp_path)))
    assert tuple(shown) == png_size(logged.read_bytes())  # the logged PNG itself, decoded by the browser
    box = img.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 50, box
    page.screenshot(path=str(artifacts_dir() / "mlflow_ui_train_learning_curves.png"))


def test_ui_shows_the_evaluate_run_test_accuracy(on_server, page):
    import mlflow

    client = mlflow.MlflowClient(on_server.server.url)
    evaluate = client.get_run(on_server.runs["evaluate"])
    open_run(page, on_server.server.url, evaluate)
    assert evaluate.info.run_name == "evaluate:resnet_mini:shapes"
    assert metric_shown(page, "test_accuracy") == pytest.approx(
        evaluate.data.metrics["test_accuracy"], rel=1e-6
    )
    page.get_by_text(on_server.runs["train"][:12]).first.wait_for()  # the source_run tag: its lineage
    settle(page)
    page.screenshot(path=str(artifacts_dir() / "mlflow_ui_evaluate_run.png"))
