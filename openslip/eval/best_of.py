"""Which of a training run's evaluations a trained probe or finetuned model reports.

The reference's ``main_linear.py`` scores the test set every ``--eval-freq`` epochs and reports the best
top-1 seen (``best_acc1``); BEiT's finetuning reports its ``max_accuracy`` over its evaluations the same
way. ``report="best"`` does that; ``report="final"`` reports the last epoch's score (no choice made on the
test set). Either way the result carries both: ``best_score`` with ``best_epoch``, and ``final_score``.
"""

from __future__ import annotations

from typing import Any

from openslip.errors import ConfigError

REPORTS = ("best", "final")


def check_report(report: str) -> str:
    if report not in REPORTS:
        raise ConfigError(f"report must be one of {', '.join(REPORTS)}, got {report!r}")
    return report


def best_and_final(evaluations: dict[int, dict[str, Any]], report: str) -> dict[str, Any]:
    """The metrics of the reported evaluation (``evaluations``: epoch -> metrics with ``score``), plus
    ``best_score`` / ``best_epoch`` (the earliest of equal scores, as the reference's strict ``>``),
    ``final_score`` / ``final_epoch`` and ``report``."""
    check_report(report)
    if not evaluations:
        raise ConfigError("no evaluation to report")
    final_epoch = max(evaluations)
    best_epoch = max(sorted(evaluations), key=lambda e: evaluations[e]["score"])  # max keeps the first of ties
    chosen = evaluations[best_epoch if report == "best" else final_epoch]
    return {
        **chosen,
        "best_score": evaluations[best_epoch]["score"],
        "best_epoch": float(best_epoch),
        "final_score": evaluations[final_epoch]["score"],
        "final_epoch": float(final_epoch),
        "report": report,
    }
