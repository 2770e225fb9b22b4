"""A pytest plugin (loaded by conftest.py): under ``CI=true`` a skipped test fails.

Tests skip when what they need is missing: Chromium for the MLflow UI test, Debian's
Fashion-MNIST and OpenCV's digits.png, JAX or keras-cv. On a developer's machine that is a
convenience; in CI it would let the suite pass without running them when an install step in
``.ci/run`` failed. So with ``CI=true`` every skip, at collection or in a test, becomes a
failure that says what was skipped and why."""

import os

import pytest


def strict() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, "Skipped: why")
        return str(longrepr[2])
    return str(longrepr)


def _fail(report, what: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"{what} was skipped under CI=true ({_reason(report)}); CI must run every test: "
        "fix the install step in .ci/run that should provide it"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if strict() and report.skipped and not hasattr(report, "wasxfail"):
        _fail(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if strict() and report.skipped:
        _fail(report, collector.nodeid)
