"""Bias/variance diagnosis: does a run underfit, overfit, both, or neither?

Errors are fractions (0.01 = 1%). The training error is measured in inference
mode over the training split (fit's running accuracy averages over a changing
model with dropout on, so it overstates the training error):

* bias = training error (or, when a human-level / Bayes error is known,
  avoidable bias = training error - human error);
* variance = validation error - training error.

A verdict compares each with its threshold and lists the lecture's remedies.
The lecture's three examples (train / validation error): 1% / 11% is high
variance, 15% / 16% high bias, 15% / 30% both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

VERDICTS = ("good_fit", "high_bias", "high_variance", "high_bias_and_variance")

REMEDIES = {
    "high_bias": [
        "a bigger model: more filters (model.width) or a deeper backbone",
        "train longer, or with a better optimizer / learning-rate schedule",
        "less regularization (lower l1/l2, less dropout)",
        "change the architecture (e.g. residual connections, batch norm)",
    ],
    "high_variance": [
        "more training data (or more augmentation)",
        "more regularization: l2 / l1, dropout, batch norm",
        "early stopping (training.early_stopping_patience)",
        "change the architecture (a smaller or better-suited model)",
    ],
    "good_fit": ["nothing pressing: training and validation errors are both within the thresholds"],
}


@dataclass
class Diagnosis:
    train_error: float
    val_error: float
    bias: float  # = training error
    variance: float  # = validation error - training error
    avoidable_bias: float | None  # = training error - human error, when that is known
    human_error: float | None
    verdict: str
    remedies: list = field(default_factory=list)

    def metrics(self) -> dict:
        out = {
            "train_error": self.train_error,
            "val_error": self.val_error,
            "bias": self.bias,
            "variance": self.variance,
        }
        if self.avoidable_bias is not None:
            out["avoidable_bias"] = self.avoidable_bias
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self, title: str = "Bias/variance diagnosis") -> str:
        pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
        rows = [
            ("training error (inference mode)", pct(self.train_error)),
            ("validation error", pct(self.val_error)),
        ]
        if self.human_error is not None:
            rows.append(("human-level / Bayes error", pct(self.human_error)))
            rows.append(("avoidable bias (train - human)", pct(self.avoidable_bias)))
        rows += [
            ("bias (training error)", pct(self.bias)),
            ("variance (validation - training)", pct(self.variance)),
        ]
        lines = [
            f"# {title}",
            "",
            f"**Verdict: `{self.verdict}`**",
            "",
            "| quantity | value |",
            "| --- | --- |",
            *[f"| {k} | {v} |" for k, v in rows],
            "",
            "## What to try",
            "",
        ]
        lines += [f"- {r}" for r in self.remedies]
        return "\n".join(lines) + "\n"


def diagnose(
    train_error: float,
    val_error: float,
    *,
    human_error: float | None = None,
    bias_threshold: float = 0.05,
    variance_threshold: float = 0.05,
) -> Diagnosis:
    """The verdict for one run; errors are fractions in [0, 1]."""
    for name, value in (("train_error", train_error), ("val_error", val_error)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
    bias = train_error
    variance = val_error - train_error
    avoidable = None if human_error is None else train_error - human_error
    high_bias = (avoidable if avoidable is not None else bias) > bias_threshold
    high_variance = variance > variance_threshold
    if high_bias and high_variance:
        verdict = "high_bias_and_variance"
        remedies = REMEDIES["high_bias"] + REMEDIES["high_variance"]
    elif high_bias:
        verdict, remedies = "high_bias", REMEDIES["high_bias"]
    elif high_variance:
        verdict, remedies = "high_variance", REMEDIES["high_variance"]
    else:
        verdict, remedies = "good_fit", REMEDIES["good_fit"]
    return Diagnosis(
        train_error=train_error,
        val_error=val_error,
        bias=bias,
        variance=variance,
        avoidable_bias=avoidable,
        human_error=human_error,
        verdict=verdict,
        remedies=list(remedies),
    )


def classification_error(model, dataset) -> float:
    """1 - accuracy of ``model`` in inference mode (dropout off, BN moving averages)."""
    import numpy as np

    wrong = total = 0
    for x, y in dataset:
        # a direct call, not predict_on_batch: under a MirroredStrategy that would run the whole
        # batch on every replica and concatenate the answers
        pred = np.asarray(model(x, training=False)).argmax(axis=-1)
        y = np.asarray(y)
        wrong += int((pred != y).sum())
        total += int(y.size)
    if total == 0:
        raise ValueError("cannot measure an error on an empty dataset")
    return wrong / total
