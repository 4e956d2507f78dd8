"""The CI gate on a study's best configuration: pass or fail, with one line saying why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOWER_IS_BETTER = {"eval_loss"}
FLOAT_SLACK = 1e-9  # 0.92 - 0.90 is 0.0200000000000000018 in floats: still within 0.02


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str


def judge(
    study: str,
    status: str,
    best: dict[str, Any] | None,
    metric: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    baseline: dict[str, Any] | None = None,
    max_drop: float = 0.0,
) -> Verdict:
    """Whether ``study`` (its ``status`` and best-config document) passes the thresholds."""
    if status != "completed":
        return Verdict(False, f"study {study} is {status}, not completed")
    if best is None:
        return Verdict(False, f"study {study} has no trial that finished its full budget")
    name = metric or best["objective"]["metric"]
    if name not in best["metrics"] or best["metrics"][name] is None:
        return Verdict(False, f"study {study} has no metric {name!r}")
    value = float(best["metrics"][name])
    shown = f"study {study} trial {best['trial']}: {name} {value:.4f}"
    if minimum is not None and value < minimum:
        return Verdict(False, f"{shown} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        return Verdict(False, f"{shown} is above the maximum {maximum}")
    checks = [
        f">= {minimum}" if minimum is not None else "",
        f"<= {maximum}" if maximum is not None else "",
    ]
    if baseline is not None:
        before = baseline.get("metrics", {}).get(name)
        if before is None:
            return Verdict(False, f"the baseline has no metric {name!r}")
        drop = (value - before) if name in LOWER_IS_BETTER else (before - value)
        if drop > max_drop + FLOAT_SLACK:
            return Verdict(
                False,
                f"{shown} regressed from the baseline's {before:.4f} "
                f"(by {drop:.4f}, more than --max-drop {max_drop})",
            )
        checks.append(f"within {max_drop} of the baseline's {before:.4f}")
    passed = ", ".join(c for c in checks if c)
    return Verdict(True, f"{shown} passes" + (f" ({passed})" if passed else ""))
