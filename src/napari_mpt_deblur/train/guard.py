"""The guard of a fine-tuning run: when fine-tuned weights may replace the starting ones.

At every validation the run asks :func:`guard_decision` whether the new weights beat the best
so far and the start, and keeps its answer, with the reason, in the validation record; the
run's verdict reports that reason (:class:`GuardDecision`). Records are the dicts of the run's
history: ``score`` (the selection score, dB) and ``score_by_defocus_um`` (the score per third
of its defocus range; older records hold ``sim_psnr_by_defocus_um``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GuardDecision", "guard_accepts", "guard_decision", "refused_for_a_level",
           "run_verdict", "selection_score", "worst_level_change"]


def selection_score(record: Mapping[str, Any]) -> float:
    """The selection score of a validation record (older records: minus infinity)."""
    value = record.get("score")
    return float(value) if value is not None else -math.inf


def worst_level_change(scores: Mapping[str, Any], baseline: Mapping[str, Any]
                       ) -> tuple[str, float] | None:
    """The third of the defocus range whose simulated PSNR changed most for the worse against
    ``baseline``, as ``(range, change in dB)``; ``None`` when the records have no thirds."""
    def thirds(record: Mapping[str, Any]) -> Mapping[str, Any]:
        # records made before the score was selectable hold the bundled score's thirds only
        return record.get("score_by_defocus_um") or record.get("sim_psnr_by_defocus_um") or {}

    now, start = thirds(scores), thirds(baseline)
    changes = {band: float(now[band]) - float(start[band]) for band in now if band in start}
    if not changes:
        return None
    band = min(changes, key=changes.__getitem__)
    return band, changes[band]


@dataclass(frozen=True)
class GuardDecision:
    """What the guard said of one validation, and why, as it said it then.

    Kept in the validation record (``"guard"``), so the run's verdict reports the reason the
    guard gave rather than working it out again from the history afterwards.

    Attributes
    ----------
    accepted : bool
        Whether the weights replaced the best so far.
    reason : {"", "no_gain", "level_loss"}
        Why not: the score did not beat the best and the start by ``min_gain_db``, or it did
        but one third of the defocus range lost more than ``max_level_loss_db``.
    level : (str, float) or None
        For "level_loss", the third (its range in µm) and its change in dB.
    """

    accepted: bool
    reason: str = ""
    level: tuple[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the history (``level`` as ``range``/``change_db``)."""
        out: dict[str, Any] = {"accepted": self.accepted, "reason": self.reason}
        if self.level is not None:
            out["range"], out["change_db"] = self.level
        return out


def guard_decision(scores: Mapping[str, Any], *, baseline: Mapping[str, Any],
                   best: Mapping[str, Any], min_gain_db: float, max_level_loss_db: float
                   ) -> GuardDecision:
    """The guard: new weights must beat the best so far *and* the starting model by
    ``min_gain_db`` on the selection score (so noise in the score cannot swap in a model that
    is no better than the one the user started from), and lose no more than
    ``max_level_loss_db`` on any third of the score's defocus range (a better mean bought with
    a loss near focus, say, is not an improvement for a user whose images are near focus)."""
    if not best:
        return GuardDecision(True)
    score = scores["score"]
    if not (score > selection_score(best) and score >= selection_score(baseline) + min_gain_db):
        return GuardDecision(False, "no_gain")
    worst = worst_level_change(scores, baseline)
    if worst is not None and worst[1] < -max_level_loss_db:
        return GuardDecision(False, "level_loss", worst)
    return GuardDecision(True)


def guard_accepts(scores: Mapping[str, Any], *, baseline: Mapping[str, Any],
                  best: Mapping[str, Any], min_gain_db: float, max_level_loss_db: float
                  ) -> bool:
    """Whether :func:`guard_decision` accepts the weights."""
    return guard_decision(scores, baseline=baseline, best=best, min_gain_db=min_gain_db,
                          max_level_loss_db=max_level_loss_db).accepted


def refused_for_a_level(history: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any]
                        ) -> tuple[int, float, str, float] | None:
    """The best-scoring checkpoint the guard refused, at its validation, for losing too
    much on one third of the defocus range: ``(step, mean gain, range, change)``, else
    ``None`` (also for records of runs saved before the guard recorded its reasons)."""
    base = selection_score(baseline)
    refused = [h for h in history if h.get("kind") == "validation" and h.get("step")
               and (h.get("guard") or {}).get("reason") == "level_loss"]
    if not refused:
        return None
    record = max(refused, key=selection_score)
    guard = record["guard"]
    return (int(record["step"]), selection_score(record) - base, str(guard["range"]),
            float(guard["change_db"]))


def run_verdict(history: Sequence[Mapping[str, Any]], *, baseline: Mapping[str, Any],
                best: Mapping[str, Any], score_name: str, min_gain_db: float,
                max_level_loss_db: float) -> tuple[bool, str]:
    """Whether a run kept its starting weights, and why, in one sentence for the panel and
    the CLI: the reason is the one the guard recorded in ``history`` at validation time."""
    base, top_score = selection_score(baseline), selection_score(best)
    if not best.get("step"):
        seen = [float(h["score"]) for h in history
                if h.get("kind") == "validation" and h.get("step") and "score" in h]
        top = f"; the best checkpoint reached {max(seen) - base:+.2f} dB" if seen else ""
        refused = refused_for_a_level(history, baseline)
        if refused:
            return True, (f"kept the starting model: the best checkpoint (step "
                          f"{refused[0]}) gained {refused[1]:+.2f} dB on the {score_name} "
                          f"({base:.2f} dB) but lost {-refused[3]:.2f} dB at "
                          f"{refused[2]} µm defocus (at most "
                          f"{max_level_loss_db:g} dB is allowed)")
        return True, (f"kept the starting model: no checkpoint beat it by "
                      f"{min_gain_db:g} dB on the {score_name} "
                      f"({base:.2f} dB){top}")
    return False, (f"fine-tuned weights of step {best['step']}: {score_name} "
                   f"{base:.2f} → {top_score:.2f} dB ({top_score - base:+.2f} dB)")
