"""The version folders of a SavedModel export: ``<export dir>/<name>/<version>/`` with integer
versions counting up, the layout TF Serving watches (it serves the highest version).
:func:`next_version` picks the next version; :func:`staging_folder` writes it beside its place
and renames it there once written and verified, so TF Serving never sees a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from cnn_apps.errors import ModelError


def next_version(base: str | os.PathLike) -> int:
    """1 + the highest integer version folder under ``base`` (1 when there is none)."""
    base = Path(base)
    versions = (
        [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()] if base.is_dir() else []
    )
    return max(versions, default=0) + 1


@contextlib.contextmanager
def staging_folder(path: str | os.PathLike):
    """Yield a temporary folder beside ``path`` to write and check an export in; on a clean
    exit it is renamed to ``path`` (one atomic step on one file system), on an error it is
    removed. TF Serving loads integer-named version folders only, so it never sees a
    half-written or unverified version, not even after a crash (the leftover is named
    ``.staging-<version>-<pid>``)."""
    path = Path(path)
    if path.exists():
        raise ModelError(f"export {path} exists already; versions are never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.parent / f".staging-{path.name}-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        yield staged
        os.rename(staged, path)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
