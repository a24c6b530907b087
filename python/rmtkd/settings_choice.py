"""Choosing among a few loop settings on the validation slice alone, then measuring the choice once on the
evaluation data.

Each candidate setting compresses the model in a run folder of its own (``OUT/candidates/NAME``, resumable like
any run) on a copy of the task whose evaluation data is the validation slice: everything a candidate measures,
it measures on held-out training data. The choice is made on those measurements; only then are the original and
the chosen model measured on the evaluation data, once each. So the evaluation data cannot steer which settings
win, and its figure is an honest estimate of the chosen model on unseen data.

The rule: with ``within`` (a metric budget), the candidate with the fewest parameters whose validation metric is
at most ``within`` worse than the original's (ties: the better metric); without one, or when no candidate keeps
it, the best validation metric (ties: the smaller model); remaining ties go to the earlier candidate.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from torch import nn

from rmtkd.distributed import Workers
from rmtkd.loop import LoopConfig, Progress, compress, measurements, paired_changes, save_outputs
from rmtkd.task import Task

CANDIDATES = "candidates"  # the run folder's subfolder of candidate runs


@dataclass(frozen=True)
class Candidate:
    """One setting to try: a name (its folder under OUT/candidates, letters, digits and ``=._,-``) and the loop
    settings it stands for."""

    name: str
    config: LoopConfig

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9=._,-]+", self.name):
            raise ValueError(f"candidate name: {self.name!r} is not a folder name (letters, digits and =._,-)")


def validation_stand_in(task: Task) -> Task:
    """The task with its validation slice in place of its evaluation data: what a candidate runs on."""
    if not task.validation_batches:
        raise ValueError("task.validation_batches: choosing settings on the validation slice needs one (held-out "
                         "training data); give the run a validation slice")
    return dataclasses.replace(task, eval_batches=task.validation_batches)


def ranking(within: Optional[float], worsening: float, parameters: int) -> tuple:
    """A candidate's place in the choice (lower is better), from its validation metric's worsening against the
    original (in the metric's units) and its parameters."""
    if within is not None and worsening <= within:
        return 0, parameters, worsening
    return 1, worsening, parameters


def choose_on_validation(task: Task, candidates: list[Candidate], out_dir: str | Path, *,
                         within: Optional[float] = None, progress: Progress = lambda it, total, desc: it,
                         log: Callable[[str], None] = print,
                         group: Optional[Any] = None) -> tuple[nn.Module, dict[str, Any]]:
    """Compress with every candidate on the validation slice, choose one by the module's rule, and measure it and
    the original on the evaluation data: (the chosen model, its report), the report in the loop's form (its
    ``original``, ``final`` and ``changes`` measured after the choice, on the evaluation data and the slice) with
    a ``selection`` entry listing every candidate's validation figures. Written to OUT/report.json and OUT/model.
    """
    if not candidates:
        raise ValueError("candidates: give at least one setting to choose among")
    names = [candidate.name for candidate in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidates: names must differ, got {names}")
    if within is not None and within < 0:
        raise ValueError(f"within: expected a metric budget of 0 or more, got {within}")
    workers, out_dir, metric = Workers(group), Path(out_dir), task.adapter.metric
    stand_in = validation_stand_in(task)
    rows, best = [], None
    for index, candidate in enumerate(candidates):
        log(f"candidate {index + 1}/{len(candidates)}: {candidate.name}")
        model, report = compress(stand_in, candidate.config, out_dir / CANDIDATES / candidate.name,
                                 progress=progress, log=log, group=group)
        change = report["changes"]["evaluation"]  # the stand-in's "evaluation" is the validation slice
        row = {"name": candidate.name, "parameters": report["final"]["parameters"],
               "parameter_reduction": report["parameter_reduction"],
               f"validation_{metric.name}": report["final"][metric.name],
               f"validation_{metric.name}_interval": report["final"][f"{metric.name}_interval"],
               f"validation_{metric.name}_change": change}
        rank = ranking(within, metric.worsening(0.0, change["value"]), row["parameters"])
        rows.append(row)
        log(f"candidate {candidate.name}: {row['parameters']:,} parameters, validation {metric.name} "
            f"{row[f'validation_{metric.name}']:.4f} (change {change['value']:+.4f})")
        if best is None or rank < best[0]:
            best = (rank, candidate, model, report)
    rank, chosen, model, report = best
    kept = rank[0] == 0
    rule = (f"fewest parameters within {within} of the original's validation {metric.name}" if kept else
            f"best validation {metric.name}" + ("" if within is None else f" (no candidate within {within})"))
    log(f"chosen on the validation slice: {chosen.name} ({rule}); now measured on the evaluation data")
    report = _measured_after_the_choice(task, model, report, workers)
    report["steps"] = _plots_under(report["steps"], f"{CANDIDATES}/{chosen.name}")
    report["selection"] = {"on": "validation", "within": within, "rule": rule, "chosen": chosen.name,
                           "candidates": rows, "steps_measured_on": "validation"}
    save_outputs(out_dir, model, task, report, workers)
    return model, report


def _plots_under(steps: list[dict[str, Any]], folder: str) -> list[dict[str, Any]]:
    """The steps' records with their spectrum plots' paths made relative to the run folder, not the candidate's."""
    steps = copy.deepcopy(steps)
    for site in (site for step in steps for site in step["sites"] if "plot" in site):
        site["plot"] = f"{folder}/{site['plot']}"
    return steps


def _measured_after_the_choice(task: Task, model: nn.Module, report: dict[str, Any],
                               workers: Workers) -> dict[str, Any]:
    """The chosen candidate's report with the original and the chosen model measured on the evaluation data and
    the validation slice (the first reading of the evaluation data in the whole choice)."""
    metric = task.adapter.metric
    original, original_items = measurements(task, task.model, workers, validation=True)
    final, items = measurements(task, model, workers, validation=True)
    original_items = {where: measured.to_dict() for where, measured in original_items.items()}
    return {**report, "original": workers.broadcast(original), "final": workers.broadcast(final),
            "parameter_reduction": 1 - final["parameters"] / original["parameters"],
            f"{metric.name}_change": final[metric.name] - original[metric.name],
            "changes": paired_changes(task, original_items, items)}
