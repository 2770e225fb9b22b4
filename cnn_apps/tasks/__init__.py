"""One task interface for every stage (:class:`~cnn_apps.tasks.base.Task`).

``for_config(config, spec)`` gives the task that trains, evaluates and exports what a config
and a prepared dataset describe; ``for_run(config, spec, source_run)`` the task of a trained
model, read from the run that trained it. The tasks register themselves by name
(``registry.register("task", name)``): ``classification``, ``pretext``, ``detection``,
``region_detection`` (R-CNN, SPP-net) and ``segmentation``.
"""

from cnn_apps import registry
from cnn_apps.tasks import classification, detection, region_detection, segmentation  # noqa: F401
from cnn_apps.tasks.base import FitPlan, Report, Task
from cnn_apps.tasks.region_detection import is_region_detector


def task_name(task: str, architecture: str | None) -> str:
    """The registered task for a config's ``task`` and ``model.architecture``."""
    if task == "detection" and is_region_detector(architecture):
        return "region_detection"
    return task


def task_class(config, architecture: str | None = None) -> type[Task]:
    """The registered task class for ``config`` (without a dataset)."""
    arch = config.model.architecture if architecture is None else architecture
    return registry.get("task", task_name(config.task, arch))


def for_config(config, spec, architecture: str | None = None) -> Task:
    """The task for ``config`` on the prepared dataset ``spec`` (a pretext config reads its
    images as classification data; ``architecture`` overrides the config's)."""
    kind = "pretext" if config.task == "pretext" else spec.task
    arch = config.model.architecture if architecture is None else architecture
    return registry.get("task", task_name(kind, arch))(config, spec)


def for_run(config, spec, source_run) -> Task:
    """The task of the model that train/finetune run ``source_run`` (an MLflow Run) logged."""
    architecture = source_run.data.params.get("model.architecture")
    return for_config(config, spec, architecture="" if architecture in (None, "None") else architecture)


__all__ = ["FitPlan", "Report", "Task", "for_config", "for_run", "task_class", "task_name"]
