"""The MLflow model registry: one registered model per export name, a version per export.

* ``export`` registers the train/finetune run's MLflow model (Keras flavour, with the
  input/output signature logged at training) as a new version of ``<export.name>``,
  tagged with the export's path and TF Serving version, the source run, the source run's
  metrics (``metric.<name>``) and, when an ``evaluate`` run of the same source exists,
  its test metrics (``metric.test_*``) and the task's main metric (:data:`MAIN_METRIC`).
* Aliases: MLflow reserves ``latest`` and resolves ``models:/<name>@latest`` (and
  ``models:/<name>/latest``) to the newest version by itself, so every export is
  "latest" without a call. ``champion`` moves to the new version when its main metric
  beats the current champion's (or there is none yet); without an evaluate run the
  champion stays where it is and the version's ``champion_decision`` tag says why.
* :func:`promote` (``cnn-apps promote NAME VERSION``) moves an alias by hand.
"""

from __future__ import annotations

import math

from cnn_apps.errors import TrackingError

CHAMPION = "champion"
LATEST = "latest"  # MLflow's own: always the newest version, cannot be set
MAIN_METRIC = {
    "classification": "test_accuracy",
    "pretext": "test_accuracy",
    "detection": "test_map50",
    "segmentation": "test_miou",
}


def _client(tracking_uri: str | None = None):
    import mlflow

    from cnn_apps import tracking

    if tracking_uri:  # USER:PASSWORD@ in it goes to MLflow's credential variables, not into messages
        tracking.set_tracking_uri(tracking_uri)
        if tracking_uri.startswith(("http://", "https://")):
            tracking.check_server(tracking_uri)  # unreachable, or refusing these credentials: one line
    return mlflow.MlflowClient()


def find_evaluation(source_run_id: str, experiment_id: str):
    """The newest finished ``evaluate`` run whose input was ``source_run_id``, or None."""
    runs = _client().search_runs(
        [experiment_id],
        filter_string=f"tags.stage = 'evaluate' and tags.source_run = '{source_run_id}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def alias_version(name: str, alias: str):
    """The model version ``alias`` points at, or None when the alias is not set."""
    try:
        return _client().get_model_version_by_alias(name, alias)
    except Exception:  # MLflow raises RestException/MlflowException for an unset alias
        return None


def _metric(version, metric: str) -> float | None:
    value = version.tags.get(f"metric.{metric}") if version is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def register_export(
    name: str, source, model_uri: str, *, task: str, export_path: str, export_version: int
) -> dict:
    """Register ``model_uri`` (the source run's MLflow model) as a new version of ``name``;
    tag it, and move ``champion`` to it when it wins (see the module docstring).

    ``source``: the train/finetune :class:`mlflow.entities.Run`. Returns ``{"version",
    "champion" (bool), "champion_decision" (why), "main_metric", "main_metric_value"}``."""
    import mlflow

    client = _client()
    source_id = source.info.run_id
    evaluation = find_evaluation(source_id, source.info.experiment_id)
    metrics = dict(source.data.metrics)
    if evaluation is not None:
        metrics.update(evaluation.data.metrics)
    main = MAIN_METRIC.get(task)
    value = metrics.get(main) if evaluation is not None else None
    tags = {
        "export_path": export_path,
        "export_version": str(export_version),
        "source_run": source_id,
        "task": task,
        # full precision (repr round-trips a float): the champion's score is read back from here,
        # and a rounded one made a tie look like a win
        **{f"metric.{k}": repr(float(v)) for k, v in sorted(metrics.items())},
    }
    if evaluation is not None:
        tags["evaluate_run"] = evaluation.info.run_id
    if main:
        tags["main_metric"] = main
    mv = mlflow.register_model(model_uri, name, tags=tags)
    client.update_model_version(
        name,
        mv.version,
        description=(
            f"Exported to {export_path} (TF Serving version {export_version}) from run {source_id}."
        ),
    )

    current = alias_version(name, CHAMPION)
    best = _metric(current, main) if main else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        promoted, why = (
            False,
            (
                f"no evaluate run of {source_id} with {main}: champion unchanged "
                f"(run `cnn-apps evaluate --from-run {source_id}`, then `cnn-apps promote`)"
            ),
        )
    elif current is None:
        promoted, why = True, f"first version with {main} ({value:.4g})"
    elif best is None or value > best:
        promoted, why = (
            True,
            (
                f"{main} {value:.4g} beats champion version {current.version} "
                f"({'none' if best is None else f'{best:.4g}'})"
            ),
        )
    else:
        promoted, why = (
            False,
            f"{main} {value:.4g} does not beat champion version {current.version} ({best:.4g})",
        )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
    client.set_model_version_tag(name, mv.version, "champion_decision", why)
    return {
        "version": int(mv.version),
        "champion": promoted,
        "champion_decision": why,
        "main_metric": main,
        "main_metric_value": value,
    }


def promote(name: str, version: str | int, alias: str = CHAMPION, tracking_uri: str | None = None) -> str:
    """Point ``alias`` of registered model ``name`` at ``version``; returns what changed."""
    from cnn_apps import tracking

    client = _client(tracking_uri or tracking.tracking_uri())
    where = tracking.display_uri(client.tracking_uri)
    if alias.lower() == LATEST:
        raise TrackingError(
            "the alias 'latest' is MLflow's own: models:/<name>@latest is always the newest "
            "version and cannot be moved; promote to another alias (e.g. champion)"
        )
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    except Exception as exc:
        raise TrackingError(
            f"cannot read registered model '{name}' from {where}: {tracking.redact(str(exc).splitlines()[0])}"
        ) from exc
    if not versions:
        names = sorted(m.name for m in client.search_registered_models())
        raise TrackingError(
            f"no registered model '{name}' in {where}; registered: {', '.join(names) or 'none'}"
        )
    if str(version) not in {str(v) for v in versions}:
        raise TrackingError(
            f"registered model '{name}' has no version {version}; versions: {', '.join(map(str, versions))}"
        )
    before = alias_version(name, alias)
    client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(
        name,
        str(version),
        "champion_decision" if alias == CHAMPION else f"{alias}_decision",
        "promoted by hand",
    )
    was = f" (was version {before.version})" if before is not None else ""
    return f"models:/{name}@{alias} -> version {version}{was}"
