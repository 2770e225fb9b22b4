"""What the stages share: the result a stage returns, the package's logger, and the name
of the model a source run trained."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("cnn_apps")


@dataclass
class StageResult:
    """What a stage returns: its MLflow run id and the values worth printing."""

    run_id: str
    stage: str
    outputs: dict = field(default_factory=dict)  # printed by the CLI
    extra: dict = field(default_factory=dict)  # for callers (studies), not printed


def source_model_label(source) -> str:
    """The model a train/finetune run (an MLflow Run) trained, for run names: its
    ``model.architecture``, else its ``model.backbone``."""
    params = source.data.params
    architecture = params.get("model.architecture")
    if architecture not in (None, "", "None"):
        return architecture
    return params.get("model.backbone", "model")
