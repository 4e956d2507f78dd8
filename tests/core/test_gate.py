"""The gate's verdicts on best-config documents, one rule at a time."""

from __future__ import annotations

from typing import Any

import pytest

from hpo_service.core.gate import BestConfig, judge


def best(accuracy: float = 0.9, eval_loss: float = 0.3) -> dict[str, Any]:
    return {
        "trial": 4,
        "objective": {"metric": "accuracy", "direction": "maximize", "value": accuracy},
        "metrics": {
            "accuracy": accuracy,
            "f1": 0.8,
            "matthews_corrcoef": 0.7,
            "eval_loss": eval_loss,
        },
    }


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled"])
def test_only_a_completed_study_can_pass(status: str) -> None:
    verdict = judge("s", status, best(), minimum=0.1)
    assert not verdict.passed and f"is {status}, not completed" in verdict.message


def test_a_study_without_a_full_budget_trial_fails() -> None:
    verdict = judge("s", "completed", None, minimum=0.1)
    assert not verdict.passed and "no trial that finished its full budget" in verdict.message


def test_thresholds_on_the_objective_and_on_other_metrics() -> None:
    assert judge("s", "completed", best(0.9), minimum=0.9).passed
    assert not judge("s", "completed", best(0.9), minimum=0.91).passed
    assert judge("s", "completed", best(), metric="eval_loss", maximum=0.3).passed
    verdict = judge("s", "completed", best(), metric="eval_loss", maximum=0.29)
    assert not verdict.passed and "eval_loss 0.3000 is above the maximum 0.29" in verdict.message
    verdict = judge("s", "completed", best(), metric="bleu", minimum=0)
    assert not verdict.passed and "no metric 'bleu'" in verdict.message


def test_a_regression_is_a_drop_for_scores_and_a_rise_for_the_loss() -> None:
    before = best(accuracy=0.92, eval_loss=0.25)
    assert not judge("s", "completed", best(0.9), baseline=before, max_drop=0.01).passed
    assert judge("s", "completed", best(0.9), baseline=before, max_drop=0.02).passed
    rose = judge(
        "s", "completed", best(eval_loss=0.3), metric="eval_loss", baseline=before, max_drop=0.01
    )
    assert not rose.passed and "regressed from the baseline's 0.2500" in rose.message
    fell = judge("s", "completed", best(eval_loss=0.2), metric="eval_loss", baseline=before)
    assert fell.passed and "within 0.0 of the baseline's 0.2500" in fell.message


def confirmed(scores: list[float], trial: int = 4) -> dict[str, Any]:
    """A v2 document whose accuracy was confirmed over len(scores) fresh seeds."""
    import statistics

    mean = statistics.fmean(scores)
    spread = {"mean": mean, "std": statistics.stdev(scores), "worst": min(scores)}
    document = best(mean)
    document["trial"] = trial
    document["confirmation"] = {"metrics": {"accuracy": {**spread, "scores": scores}}}
    return document


def test_with_confirmation_seeds_the_gate_judges_the_mean_the_pessimistic_mean_or_the_worst() -> (
    None
):
    document = confirmed([0.90, 0.86, 0.88])  # mean 0.88, std 0.02, worst 0.86
    assert judge("s", "completed", document, minimum=0.87).passed
    verdict = judge("s", "completed", document, minimum=0.87, statistic="mean-std")
    assert not verdict.passed
    assert "accuracy 0.8800 ± 0.0200 over 3 seeds (worst 0.8600)" in verdict.message
    assert "accuracy (mean-std) 0.8600 is below the minimum 0.87" in verdict.message
    assert not judge("s", "completed", document, minimum=0.87, statistic="worst").passed
    assert judge("s", "completed", document, minimum=0.86, statistic="worst").passed
    # A failed seed is the worst seed: --on worst fails; the mean is over the runs that ended.
    document["confirmation"]["failed_runs"] = [{"trial": 9, "seed": 10_003, "error": "diverged"}]
    BestConfig.model_validate(document)
    verdict = judge("s", "completed", document, minimum=0.5, statistic="worst")
    assert not verdict.passed and "1 more confirmation run(s) failed" in verdict.message
    assert judge("s", "completed", document, minimum=0.87).passed
    # A single run (v1 document) has no spread: every statistic is its value.
    assert judge("s", "completed", best(0.9), minimum=0.9, statistic="worst").passed


def test_against_a_confirmed_baseline_noise_alone_never_fails_a_pipeline() -> None:
    before = confirmed([0.90, 0.86, 0.88])  # 0.88 ± 0.02
    after = confirmed([0.88, 0.84, 0.86])  # 0.86 ± 0.02: within the noise of both
    verdict = judge("s", "completed", after, baseline=before)
    assert (
        verdict.passed and "within 0.0 + noise 0.0283 of the baseline's 0.8800" in verdict.message
    )
    worse = confirmed([0.80, 0.78, 0.82])  # 0.80: a real drop
    verdict = judge("s", "completed", worse, baseline=before, max_drop=0.01)
    assert not verdict.passed and "by 0.0800, more than --max-drop 0.01 + noise" in verdict.message
    # Without spreads on either side, the old rule: the drop alone against --max-drop.
    assert not judge("s", "completed", best(0.86), baseline=best(0.88)).passed


def test_a_metric_that_is_not_a_number_never_passes() -> None:
    nan = float("nan")
    verdict = judge("s", "completed", best(nan), minimum=0.9)
    assert not verdict.passed and "accuracy nan is not a finite number" in verdict.message
    verdict = judge("s", "completed", best(eval_loss=nan), metric="eval_loss", maximum=0.5)
    assert not verdict.passed
    verdict = judge("s", "completed", best(0.9), baseline=best(nan))
    assert not verdict.passed and "the baseline's accuracy nan is not a finite number" in (
        verdict.message
    )
    spread_unknown = confirmed([0.90, 0.88])
    spread_unknown["confirmation"]["metrics"]["accuracy"]["std"] = nan  # the noise allowance
    assert not judge("s", "completed", best(0.9), baseline=spread_unknown).passed


def test_every_kind_of_best_config_document_is_a_baseline() -> None:
    BestConfig.model_validate(best())
    BestConfig.model_validate(confirmed([0.90, 0.86, 0.88]))
    BestConfig.model_validate({**best(), "confirmation": None, "metrics": {"train_seconds": None}})
