import pytest

from cnn_apps.training.diagnosis import diagnose


@pytest.mark.parametrize(
    "train, val, verdict, bias, variance",
    [
        (0.01, 0.11, "high_variance", 0.01, 0.10),  # the lecture's first example
        (0.15, 0.16, "high_bias", 0.15, 0.01),  # second
        (0.15, 0.30, "high_bias_and_variance", 0.15, 0.15),  # third
        (0.005, 0.01, "good_fit", 0.005, 0.005),
    ],
)
def test_the_lectures_examples(train, val, verdict, bias, variance):
    d = diagnose(train, val)
    assert d.verdict == verdict
    assert d.bias == pytest.approx(bias) and d.variance == pytest.approx(variance)
    assert d.remedies
    assert d.avoidable_bias is None and "avoidable_bias" not in d.metrics()


def test_human_level_error_turns_bias_into_avoidable_bias():
    # 15% training error is no bias problem when humans make 14% (the lecture's blurry images)
    d = diagnose(0.15, 0.16, human_error=0.14)
    assert d.avoidable_bias == pytest.approx(0.01) and d.verdict == "good_fit"
    assert diagnose(0.08, 0.10, human_error=0.01).verdict == "high_bias"


def test_remedies_and_report_match_the_verdict():
    d = diagnose(0.01, 0.11)
    assert any("more training data" in r for r in d.remedies)
    assert not any("bigger model" in r for r in d.remedies)
    report = d.markdown()
    assert "`high_variance`" in report and "10.00%" in report
    both = diagnose(0.15, 0.30)
    assert any("bigger model" in r for r in both.remedies) and any(
        "more training data" in r for r in both.remedies
    )


def test_thresholds_come_from_the_caller():
    assert diagnose(0.01, 0.04, variance_threshold=0.02).verdict == "high_variance"
    assert diagnose(0.01, 0.04, variance_threshold=0.05).verdict == "good_fit"
    with pytest.raises(ValueError):
        diagnose(1.5, 0.1)
