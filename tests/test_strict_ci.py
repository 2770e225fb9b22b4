"""CI cannot pass by skipping: under CI=true a skip (in a test, a skipif mark or a module-level
importorskip) fails the run; elsewhere it stays a skip. pytest runs with --strict-markers."""

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SKIPPING = """
import pytest

def test_needs_a_browser():
    pytest.skip("no Chromium found")

@pytest.mark.skipif(True, reason="Debian dataset-fashion-mnist not installed")
def test_needs_fashion_mnist():
    pass

def test_runs():
    assert True
"""


def _pytest(folder: Path, ci: str | None, *args) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "strict_ci",
            "-p",
            "no:cacheprovider",
            *args,
            str(folder),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def skipping(tmp_path):
    (tmp_path / "skips").mkdir()
    (tmp_path / "skips" / "test_skipping.py").write_text(SKIPPING)
    return tmp_path / "skips"


@pytest.fixture
def module_skip(tmp_path):
    (tmp_path / "module").mkdir()
    (tmp_path / "module" / "test_module_skip.py").write_text(
        'import pytest\n\npytest.importorskip("no_such_module_xyz")\n'
    )
    return tmp_path / "module"


def test_skips_fail_under_ci(skipping):
    done = _pytest(skipping, "true")
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed, 1 error" in done.stdout, done.stdout  # a skipif fails at setup
    assert "skipped under CI=true (Skipped: no Chromium found)" in done.stdout
    assert "fix the install step in .ci/run" in done.stdout


def test_a_module_skipped_at_collection_fails_under_ci(module_skip):
    done = _pytest(module_skip, "true")
    assert done.returncode != 0 and "no_such_module_xyz" in done.stdout, done.stdout
    assert "was skipped under CI=true" in done.stdout


def test_skips_stay_skips_elsewhere(skipping, module_skip):
    assert _pytest(skipping, None).returncode == 0
    assert "1 passed, 2 skipped" in _pytest(skipping, None).stdout
    assert "1 skipped" in _pytest(module_skip, None).stdout


def test_unknown_markers_are_errors():
    config = (TESTS.parent / "pyproject.toml").read_text()
    assert 'addopts = "--strict-markers"' in config
