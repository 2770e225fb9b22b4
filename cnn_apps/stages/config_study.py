"""The driver shared by the studies that compare whole model configs on one dataset (the
detector ladder, ``study.detectors``; the segmenter comparison, ``study.segmenters``).

Each entry of the list is a model config file (``pipelines/configs/*.yaml``); the study
config's ``data``, ``evaluate``, ``detection``, ``segmentation`` and ``tracking`` sections
replace the child's, so all share the images, the input size and the post-processing,
and the child keeps its own ``model``, ``augment`` and ``training``. Every child is trained
and evaluated as nested runs of one parent ``study`` run (tags ``study``, ``setting``: the
child's architecture, ``study_run``: the parent's id).
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager

from cnn_apps import tracking
from cnn_apps.config import Config, load_config
from cnn_apps.errors import ConfigError
from cnn_apps.stages.common import log
from cnn_apps.tasks.inputs import dataset_label

SHARED_SECTIONS = ("data", "evaluate", "detection", "segmentation", "tracking")


def child_config(parent: Config, path: str, task: str | None = None) -> Config:
    """The model config at ``path`` with the study's shared sections (and seed)."""
    task = task or parent.task
    if not os.path.exists(path):
        raise ConfigError(f"no such config file {path!r} (paths are relative to the working directory)")
    child = load_config(path)
    if child.task != task or not child.model.architecture:
        raise ConfigError(f"{path} is not a {task} config with model.architecture")
    for section in SHARED_SECTIONS:
        setattr(child, section, copy.deepcopy(getattr(parent, section)))
    child.training.seed = parent.training.seed
    return child


@contextmanager
def config_study(config: Config, kind: str, paths: list[str], field: str, from_run: str | None = None):
    """Validate every child config, prepare the data (unless ``from_run``), open the parent
    run and yield ``(parent run, spec, children)``; ``children()`` trains and evaluates each
    child in turn, yielding ``(architecture, train result, evaluate result, evaluate metrics,
    train metrics)``."""
    from cnn_apps.stages.evaluate import evaluate
    from cnn_apps.stages.train import train

    if not paths:
        raise ConfigError(f"study.{field} is empty: list {config.task} config files")
    children = [(path, child_config(config, path)) for path in paths]  # validate before any work
    if from_run is None:
        from cnn_apps.stages.prepare import prepare

        from_run = prepare(config).run_id
    tracking.setup(config)
    spec = tracking.load_dataset_spec(from_run)
    with tracking.stage_run(
        config,
        "study",
        model=kind,
        dataset=dataset_label(spec),
        source_run=from_run,
        fingerprint=spec.fingerprint,
        tags={"study": kind},
    ) as parent:

        def run_children():
            for path, child in children:
                name = child.model.architecture
                log.info("study %s: %s (%s)", kind, name, path)
                tags = {"study": kind, "setting": name, "study_run": parent.info.run_id}
                trained = train(
                    child,
                    from_run,
                    nested=True,
                    tags=tags,
                    run_name=f"train:{name}:{dataset_label(spec)}:{kind}",
                )
                evaluated = evaluate(child, trained.run_id, nested=True)
                yield (
                    name,
                    trained,
                    evaluated,
                    tracking.get_run(evaluated.run_id).data.metrics,
                    tracking.get_run(trained.run_id).data.metrics,
                )

        yield parent, spec, run_children
