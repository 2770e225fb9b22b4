"""A griffe extension for the API pages: the package's docstrings cross-reference with Sphinx
roles (``:func:`~cnn_apps.detection.nms.batched_nms```), which mkdocstrings would print as they
are. Each role becomes a code span of the name it shows: the last dotted part with ``~``, the
whole target without (``batched_nms``, ``cnn_apps.detection.nms``).

mkdocs.yml loads it with the python handler's ``extensions`` option."""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`<]+?)(?:\s*<[^>]+>)?`")


def plain(text: str) -> str:
    """``text`` with every Sphinx role replaced by a code span of the name it would show."""

    def shown(match: re.Match) -> str:
        target = match.group(2).strip().lstrip(".")
        return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"

    return ROLE.sub(shown, text)


class SphinxRoles(griffe.Extension):
    """Rewrites each loaded object's docstring with :func:`plain`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
