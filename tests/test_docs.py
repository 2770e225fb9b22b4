"""The documentation stays true: the configuration reference is the config dataclasses' own, the
README's and CONTRIBUTING's links lead somewhere, and the site builds with ``--strict`` (a broken
link or anchor, a page missing from the nav, or a docstring the API reference cannot render)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

from cnn_apps import config

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


config_reference = _load(ROOT / "docs" / "scripts" / "config_reference.py", "config_reference")


def test_the_configuration_page_is_current():
    page = config_reference.PAGE.read_text(encoding="utf-8")
    assert config_reference.render(page, config) == page, (
        "docs/configuration.md is stale: run python docs/scripts/config_reference.py"
    )


def test_the_configuration_page_lists_every_key_with_its_default():
    page = config_reference.PAGE.read_text(encoding="utf-8")
    missing = [key for key in config.Config().flat() if f"| `{key}` |" not in page]
    assert not missing, f"keys missing from docs/configuration.md: {missing}"
    assert f"| `training.epochs` | `int` | `{config.TrainingConfig().epochs}` |" in page
    assert "| `data.path` | `str` or `null` | `null` |" in page


def test_a_new_config_field_makes_the_page_stale(tmp_path):
    source = Path(config.__file__).read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    anchor = [i for i, line in enumerate(lines) if line.startswith("    epochs: int = 12")]
    assert anchor, "the test's anchor line (TrainingConfig.epochs) moved: update it"
    lines.insert(anchor[0] + 1, "    warmup_ratio: float = 0.0  # a knob added after the page\n")
    variant_path = tmp_path / "config_variant.py"
    variant_path.write_text("".join(lines), encoding="utf-8")
    variant = _load(variant_path, "config_variant")
    page = config_reference.PAGE.read_text(encoding="utf-8")
    regenerated = config_reference.render(page, variant)
    assert regenerated != page
    assert "| `training.warmup_ratio` | `float` | `0.0` | a knob added after the page. |" in regenerated


def test_field_help_comes_from_comments_above_beside_and_inside_a_field():
    source = (
        "class Section:\n"
        "    # the block above\n"
        "    # on two lines\n"
        "    first: int = 1  # and a trailing one\n"
        "    second: str | None = (\n"
        "        None  # inside a parenthesised value\n"
        "    )\n"
        "    third: bool = True\n"
    )
    helps = config_reference.field_comments(source)["Section"]
    assert helps == {
        "first": "the block above on two lines and a trailing one",
        "second": "inside a parenthesised value",
        "third": "",
    }


# ------------------------------------------------------------------------------- links
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def _anchors(page: Path) -> set[str]:
    """The heading ids MkDocs gives ``page`` (Python-Markdown's toc slugify)."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)
    return {slugify(re.sub(r"[`*]", "", heading), "-") for heading in headings}


@pytest.mark.parametrize("document", ["README.md", "CONTRIBUTING.md"])
def test_every_relative_link_resolves(document):
    path = ROOT / document
    links = _relative_links(path)
    assert links, f"{document} links no page"
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve()
        if not resolved.exists():
            broken.append(f"{link}: {resolved.relative_to(ROOT)} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{link}: no heading with the anchor #{anchor}")
    assert not broken, f"{document}: " + "; ".join(broken)


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 150, f"README.md has {lines} lines; move detail to a page under docs/"


# ------------------------------------------------------------------------------- site
def test_the_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ("getting-started", "configuration", "results", "api/config"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
    # the docstrings' Sphinx roles render as code (docs/scripts/sphinx_roles.py), never literally
    for page in sorted((tmp_path / "site" / "api").glob("*/index.html")):
        literal = re.findall(
            r":(?:func|class|meth|mod|attr|data|exc):<code>", page.read_text(encoding="utf-8")
        )
        assert not literal, f"{page.parent.name}: {len(literal)} Sphinx roles shown as text"


def test_sphinx_roles_become_the_names_they_show():
    sys.path.insert(0, str(ROOT / "docs" / "scripts"))
    from sphinx_roles import plain

    text = "See :func:`~cnn_apps.detection.nms.batched_nms`, :mod:`cnn_apps.serving` and :meth:`Head.fit`."
    assert plain(text) == "See `batched_nms`, `cnn_apps.serving` and `Head.fit`."
