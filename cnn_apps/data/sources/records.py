"""What the sources do with their records between scanning and the spec: split them
(stratified by class, or seeded), count them per class, summarize the skipped ones, and
read back the JSON manifest a file source's prepare wrote."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from cnn_apps.errors import ConfigError, DataError


def stratified_split(labels: np.ndarray, fractions: dict, seed: int) -> dict:
    """Split indices per class: ``{"validation": 0.1, ...}`` -> ``{"validation": idx, ..., "rest": idx}``.

    Each class gives ``round(n * fraction)`` examples to each named part (at most
    ``n - 1`` in all, so the rest keeps one per class); deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    parts = {name: [] for name in fractions}
    parts["rest"] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for name, frac in fractions.items():
            take = min(int(round(len(idx) * frac)), max(len(idx) - 1 - start, 0))
            parts[name].extend(idx[start : start + take])
            start += take
        parts["rest"].extend(idx[start:])
    return {k: np.sort(np.asarray(v, np.int64)) for k, v in parts.items()}


def subset_seed(data) -> int:
    """The seed of ``max_train_examples``' draw: ``data.subset_seed``, else ``data.seed`` (a data
    config, or its dict as a spec stores it)."""
    get = data.get if isinstance(data, dict) else lambda key: getattr(data, key, None)
    chosen = get("subset_seed")
    return get("seed") if chosen is None else chosen


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices with the class balance of ``labels`` (for ``max_train_examples``)."""
    if n >= len(labels):
        return np.arange(len(labels))
    return stratified_split(labels, {"keep": n / len(labels)}, seed)["keep"]


def _random_split(records: list, fractions: dict, seed: int) -> dict:
    """Seeded split of a list: ``{"test": 0.1, ...}`` -> ``{"test": [...], ..., "rest": [...]}``
    (each part keeps the records' order; ``rest`` keeps at least one record)."""
    order = np.random.default_rng(seed).permutation(len(records))
    parts, start = {}, 0
    for name, frac in fractions.items():
        take = min(int(round(len(records) * frac)), max(len(records) - 1 - start, 0))
        parts[name] = sorted(order[start : start + take])
        start += take
    parts["rest"] = sorted(order[start:])
    return {k: [records[i] for i in v] for k, v in parts.items()}


def select_classes(class_names, wanted, source: str) -> list[int] | None:
    """The indices into ``class_names`` that ``data.classes`` (``wanted``) keeps, in its order:
    an int is an index, a string a name. None when ``wanted`` is None (every class). A
    ConfigError names the valid indices and names, a repeated class, or fewer than two."""
    if wanted is None:
        return None
    names = [str(n) for n in class_names]
    chosen = []
    for item in wanted:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(names):
            index = item
        elif isinstance(item, str) and item in names:
            index = names.index(item)
        else:
            raise ConfigError(
                f"data.classes: {item!r} is not a class of data.source {source}: give indices "
                f"0..{len(names) - 1} or names ({', '.join(names)})"
            )
        if index in chosen:
            raise ConfigError(f"data.classes: {names[index]!r} is given twice")
        chosen.append(index)
    if len(chosen) < 2:
        raise ConfigError(f"data.classes: keep at least two classes, got {list(wanted)}")
    return chosen


def relabel(labels: np.ndarray, chosen: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(the positions of the examples whose class is in ``chosen``, their labels renumbered to
    positions in ``chosen``); every example, unchanged, when ``chosen`` is None."""
    labels = np.asarray(labels, np.int64)
    if chosen is None:
        return np.arange(len(labels)), labels
    lookup = np.full(max(int(labels.max(initial=0)), max(chosen)) + 1, -1, np.int64)
    lookup[chosen] = np.arange(len(chosen))
    new = lookup[labels]
    keep = np.flatnonzero(new >= 0)
    return keep, new[keep]


def _class_counts(labels, class_names) -> dict:
    counts = Counter(int(v) for v in labels)
    return {name: counts.get(i, 0) for i, name in enumerate(class_names)}


def skipped_summary(skipped: list, show: int = 3) -> str:
    """``"; 5 records skipped: a.jpg (reason); ... and 2 more"`` for an error raised when bad
    records left nothing to use (the skipped list is never logged then), else ``""``."""
    if not skipped:
        return ""
    shown = "; ".join(f"{item['file']} ({item['reason']})" for item in skipped[:show])
    more = f"; and {len(skipped) - show} more" if len(skipped) > show else ""
    return f"; {len(skipped)} records skipped: {shown}{more}"


def write_manifest(path: Path, source: str, root: Path, class_names, splits: dict) -> None:
    """The JSON manifest of a folder source (what :func:`read_manifest` reads): the source's
    name, the folder it read, the class names and each split's records."""
    record = {
        "source": source,
        "root": str(Path(root).resolve()),
        "class_names": class_names,
        "splits": splits,
    }
    Path(path).write_text(json.dumps(record), encoding="utf-8")


def read_manifest(location: str) -> dict:
    """The JSON manifest a folder source's prepare wrote (``spec.location``), or a DataError
    saying to prepare again."""
    try:
        return json.loads(Path(location).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"manifest {location} is gone: run `cnn-apps prepare` again") from exc
    except ValueError as exc:
        raise DataError(
            f"manifest {location} is not valid JSON ({exc}): run `cnn-apps prepare` again"
        ) from exc
