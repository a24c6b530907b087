"""What the loop records of each step and site, typed: what was done (an enum) and why (prose, for people).

Reports and checkpoints hold these as JSON (``to_dict``); code that reads them compares the enums, never the
prose.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional


class Outcome(StrEnum):
    """How a step (or the recovery pass) ended."""

    KEPT = "kept"  # the compressed, distilled model goes on
    NOTHING = "nothing to compress"  # no site of the step would save parameters
    ROLLED_BACK = "rolled back"  # the model before the step goes on; the record's ``why`` says why


class Action(StrEnum):
    """What a step did with one of its sites."""

    PROJECTED = "projected"
    SKIPPED = "skipped"  # the record's ``why`` says why


def site_decision(record: dict[str, Any], action: Action, reason: str = "") -> dict[str, Any]:
    """A site's selection record (its ``reason`` says what the spectrum kept) with what was done with it."""
    record["action"] = action
    if reason:
        record["why"] = reason
    return record


def described(entry: dict[str, Any]) -> str:
    """A step's outcome, a site's action or a recovery pass's outcome with its reason, for people."""
    what = entry.get("outcome", entry.get("action"))
    why = entry.get("why")
    return f"{what}: {why}" if why else str(what)


@dataclass
class StepRecord:
    """One step: its sites' decisions, the model's size before and after, and what was measured."""

    step: int
    sites: list[dict[str, Any]]
    parameters_before: int
    outcome: Outcome = Outcome.NOTHING
    why: str = ""  # the reason of a rollback
    parameters_after: Optional[int] = None
    seconds: float = 0.0
    # "<metric>_projected", "<metric>_after", ...; "validation_<metric>_change": the change with its interval
    measured: dict[str, Any] = field(default_factory=dict)
    flops_after: Optional[int] = None
    distillation: Optional[dict[str, Any]] = None

    def end(self, outcome: Outcome, seconds: float, parameters_after: Optional[int] = None,
            why: str = "") -> "StepRecord":
        self.outcome, self.seconds, self.why = outcome, seconds, why
        self.parameters_after = self.parameters_before if parameters_after is None else parameters_after
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields (unset ones left out) with the measurements at the top level."""
        data = {"step": self.step, "sites": self.sites, "parameters_before": self.parameters_before,
                "outcome": self.outcome, "why": self.why, "parameters_after": self.parameters_after,
                "seconds": self.seconds, "flops_after": self.flops_after, "distillation": self.distillation}
        return {key: value for key, value in data.items() if value not in (None, "")} | self.measured
