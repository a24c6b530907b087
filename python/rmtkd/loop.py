"""The RMT-KD loop: calibrate → select → project → self-distill → evaluate, one site (or block) at a time.

Steps go shallow to deep in forward order. A step's teacher is the model as it was before the step (a frozen
copy), so a step that breaks the metric budget or whose distillation diverges is rolled back by keeping that
copy. The loop stops at the parameter target or when every site has been tried; an optional recovery pass then
distills the compressed model against the original. After every step the model, the applied rewrites and the
report are checkpointed (atomically, :mod:`rmtkd.checkpoint`); re-running on the same output folder resumes
after the last completed step. Each step seeds torch with (seed, step) before it runs, so a resumed run reaches
the same weights as an uninterrupted one.
"""
from __future__ import annotations

import copy
import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from rmtkd import checkpoint
from rmtkd.adapters.metric import MetricItems
from rmtkd.atomic import write_text_atomically
from rmtkd.calibration import SelectionConfig, SiteSelection, calibrate_and_select
from rmtkd.distill import DistillConfig, NonFiniteLoss, distill
from rmtkd.distributed import Workers
from rmtkd.intervals import metric_interval, paired_change
from rmtkd.metrics import count_parameters
from rmtkd.planning import one_rewrite_per_module, plan_model_ranks, saves_parameters
from rmtkd.records import Action, Outcome, StepRecord, described, site_decision
from rmtkd.sites import Site
from rmtkd.surgery import rewrite_site
from rmtkd.task import Task

Progress = Callable[[Iterable, int, str], Iterable]


@dataclass(frozen=True)
class LoopConfig:
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # The threshold rule stops once total parameters fell by this fraction; a rank budget is planned to meet it.
    target_reduction: Optional[float] = None
    # Roll back a step whose metric on the task's validation batches is this much worse than the original's.
    max_metric_drop: Optional[float] = None
    granularity: str = "site"  # "site" or "block" (the adapter's block_of groups sites)
    seed: int = 0
    # After the loop: distill the compressed model against the original model (not the previous step's), to
    # recover what the cuts lost together. None: no recovery pass (the paper's loop).
    recovery: Optional[DistillConfig] = None
    # "rule": every site's rank from its own noise threshold (the paper's); "budget": ranks planned over all the
    # sites the rule projects so that the model meets target_reduction (rmtkd.rank_budget).
    ranks: str = "rule"
    # A rank budget's second cap: this fraction fewer forward FLOPs (counted on the first calibration batch).
    target_flop_reduction: Optional[float] = None

    def __post_init__(self) -> None:
        if self.granularity not in ("site", "block"):
            raise ValueError(f"granularity: expected 'site' or 'block', got {self.granularity!r}")
        if self.target_reduction is not None and not 0 < self.target_reduction < 1:
            raise ValueError(f"target_reduction: expected a fraction in (0, 1), got {self.target_reduction!r}")
        if self.ranks not in ("rule", "budget"):
            raise ValueError(f"ranks: expected 'rule' or 'budget', got {self.ranks!r}")
        if self.ranks == "budget" and self.target_reduction is None:
            raise ValueError("ranks: a rank budget is planned to meet target_reduction; set it (e.g. 0.8)")
        if self.target_flop_reduction is not None:
            if not 0 < self.target_flop_reduction < 1:
                raise ValueError(f"target_flop_reduction: expected a fraction in (0, 1), got "
                                 f"{self.target_flop_reduction!r}")
            if self.ranks != "budget":
                raise ValueError("target_flop_reduction: only a rank budget plans for FLOPs; set ranks='budget'")
        if self.recovery is not None and self.recovery.steps < 1:
            raise ValueError(f"recovery: a recovery pass needs at least 1 step, got {self.recovery.steps} (leave "
                             "recovery unset for none)")

    def fingerprint(self) -> str:
        """A hash of every setting: a run folder resumes only with the settings that made it."""
        return checkpoint.fingerprint(asdict(self))

    @property
    def decides(self) -> bool:
        """Whether the loop makes decisions on measured metrics (and so needs validation data)."""
        return (self.max_metric_drop is not None or self.distill.check_every > 0
                or (self.recovery is not None and self.recovery.check_every > 0))


@dataclass
class _Run:
    """What every part of one run shares: the task, the settings, the processes, and where progress goes."""

    task: Task
    config: LoopConfig
    out_dir: Path
    workers: Workers
    progress: Progress
    say: Callable[[str], None]

    @property
    def metric(self) -> str:
        return self.task.adapter.metric.name

    def save_checkpoint(self, model: nn.Module, state: dict[str, Any]) -> None:
        if self.workers.is_main:
            checkpoint.save_checkpoint(self.out_dir, model, self.task, state)
        self.workers.barrier()


def compress(task: Task, config: LoopConfig, out_dir: str | Path, *,
             progress: Progress = lambda it, total, desc: it,
             log: Callable[[str], None] = print, group: Optional[Any] = None) -> tuple[nn.Module, dict[str, Any]]:
    """Run (or resume) RMT-KD on ``task``: (compressed model, report); the report also goes to out_dir.

    ``task.model`` is left as it was: the loop works on a copy. With ``group`` (an initialised torch.distributed
    process group) every rank calls this with its own shard of the data in ``task``: the calibration statistics
    and the evaluation sums are summed over the ranks, distillation runs under DistributedDataParallel, rank 0
    decides and is the only one that logs and writes; every rank returns the same model and report.
    """
    workers = Workers(group)
    run = _Run(task, config, Path(out_dir), workers, progress, log if workers.is_main else (lambda message: None))
    workers.agree(config.fingerprint(), "settings (the loop's fingerprint)")
    workers.together(lambda: task.check_data(config.decides))
    if workers.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
    groups = task.step_groups(task.sites(task.model), config.granularity)
    model, state = _start(run, groups)
    # The threshold rule stops at the target; a rank budget is planned to meet it after its last step.
    target = (None if config.target_reduction is None or config.ranks == "budget"
              else state["original"]["parameters"] * (1 - config.target_reduction))
    for index in range(state["next_step"], len(groups)):
        if target is not None and count_parameters(model) <= target:
            state["stopped"] = f"parameter target reached ({count_parameters(model):,} <= {target:,.0f})"
            break
        torch.manual_seed(config.seed * 100_003 + index)
        model, record = _run_step(run, model, groups[index], state)
        state["steps"].append(workers.broadcast(record.to_dict()))  # rank 0's timings and FLOPs everywhere
        state["next_step"] = index + 1
        run.save_checkpoint(model, state)
        after = record.measured.get(f"{run.metric}_after")  # none for a step with nothing to compress
        run.say(f"step {index + 1}/{len(groups)} {groups[index][0].name}{'…' if len(groups[index]) > 1 else ''}: "
                f"{described(state['steps'][-1])}, parameters {record.parameters_after:,}"
                + (f", {run.metric} {after:.4f}" if after is not None else ""))
    else:
        state.setdefault("stopped", "every site tried")
    if config.recovery is not None and state["rewrites"] and "recovery" not in state:
        model = _recover(run, model, state, steps_done=len(groups))
        run.save_checkpoint(model, state)
    report = workers.broadcast(_final_report(run, model, state))
    save_outputs(run.out_dir, model, task, report, workers)
    return model, report


def save_outputs(out_dir: Path, model: nn.Module, task: Task, report: dict[str, Any], workers: Workers) -> None:
    """A finished run's report.json and model folder (the report's rewrites; its original and final figures in
    the folder's metadata), written by rank 0 while the others wait."""
    if workers.is_main:
        write_text_atomically(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
        checkpoint.save_model(out_dir / "model", model, task, report["rewrites"],
                              extra={"report": {k: report[k] for k in ("original", "final")}})
    workers.barrier()


def _start(run: _Run, groups: list[list[Site]]) -> tuple[nn.Module, dict[str, Any]]:
    """The model and loop state to go on from: the checkpoint's, or a copy of the original with its
    measurements (and the rank budget's plan)."""
    resumed = checkpoint.resume(run.out_dir, run.task, run.config.fingerprint(), run.workers)
    if resumed is not None:
        run.say(f"resuming after step {resumed[1]['next_step']} of {len(groups)} from "
                f"{run.out_dir / checkpoint.CHECKPOINT}")
        return resumed
    task, workers, metric = run.task, run.workers, run.metric
    model = copy.deepcopy(task.model)
    original, items = measurements(task, model, workers, run.config.decides)
    state = checkpoint.new_state(run.config.fingerprint(), workers.world_size,
                                 workers.broadcast(original),  # rank 0's FLOPs (its first batch)
                                 {where: per_example.to_dict() for where, per_example in items.items()})
    run.say(f"original: {original['parameters']:,} parameters, {metric} {state['original'][metric]:.4f}")
    if run.config.ranks == "budget":
        plan = state["rank_plan"] = plan_model_ranks(
            model, [site for group in groups for site in group], task, run.config.selection,
            run.config.target_reduction, run.config.target_flop_reduction, workers,
            progress=lambda it: run.progress(it, len(task.calibration_batches), "calibrating every site"))
        flops = "" if "flop_target" not in plan else (f", {plan['flops']:,} FLOPs on a calibration batch "
                                                       f"(target {plan['flop_target']:,})")
        run.say(f"rank budget: {len(plan['ranks'])} sites planned to {plan['parameters']:,} parameters (target "
                f"{plan['target']:,}){flops}: ranks {sorted(set(plan['ranks'].values()))}")
    return model, state


def _frozen_copy(model: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _thawed(teacher: nn.Module) -> nn.Module:
    """The frozen pre-step copy, made trainable again to continue the loop with."""
    for p in teacher.parameters():
        p.requires_grad_(True)
    return teacher


def _run_step(run: _Run, model: nn.Module, group: list[Site],
              state: dict[str, Any]) -> tuple[nn.Module, StepRecord]:
    """One step on ``group``: select, project, distill against the model before the step, check; returns the
    model to continue with (the student, or the teacher on rollback) and the step's record."""
    started = time.perf_counter()
    teacher = _frozen_copy(model)
    record = StepRecord(step=state["next_step"] + 1, sites=[], parameters_before=count_parameters(model))
    chosen = _choose_rewrites(run, model, group, state, record)
    rewrites = [rewrite_site(model, c.site, c.selection.basis.float(), c.selection.mean) for c in chosen]
    if not rewrites:
        return model, record.end(Outcome.NOTHING, time.perf_counter() - started)
    task, workers, metric = run.task, run.workers, run.metric
    record.measured[f"{metric}_projected"] = task.evaluate(model, workers)
    try:
        record.distillation = distill(model, teacher, task.train_batches(state["next_step"]), task.adapter,
                                      run.config.distill, workers=workers,
                                      progress=lambda it, total: run.progress(it, total, "distilling"),
                                      validate=task.validation_score(workers, run.config.distill.score))
    except NonFiniteLoss as error:
        return _thawed(teacher), record.end(Outcome.ROLLED_BACK, time.perf_counter() - started, why=str(error))
    record.measured[f"{metric}_after"] = task.evaluate(model, workers)
    record.parameters_after, record.flops_after = count_parameters(model), task.flops(model)
    worse = _worse_than_budget(run, model, state, record)
    if worse:
        return _thawed(teacher), record.end(Outcome.ROLLED_BACK, time.perf_counter() - started, why=worse)
    state["rewrites"].extend(r.to_dict() for r in rewrites)
    return model, record.end(Outcome.KEPT, time.perf_counter() - started, record.parameters_after)


def _choose_rewrites(run: _Run, model: nn.Module, group: list[Site], state: dict[str, Any],
                     record: StepRecord) -> list[SiteSelection]:
    """The group's sites calibrated and selected (at the rank budget's ranks, if planned); those whose projection
    saves parameters, one per module, are returned; every site's decision goes into ``record``."""
    current = {name for r in state["rewrites"] for name in r["names"]}
    group = [s for s in group if not set(s.names) & current]
    plan = state.get("rank_plan", {}).get("ranks")
    task = run.task
    selections = calibrate_and_select(
        model, group, task.calibration_batches, task.adapter, run.config.selection, workers=run.workers,
        ranks=plan, plots=run.out_dir,
        progress=lambda it: run.progress(it, len(task.calibration_batches), "calibrating"))
    candidates = []
    for chosen in selections:
        if plan is not None and chosen.site.name not in plan:
            site_decision(chosen.record, Action.SKIPPED,
                          "the rank budget leaves it dense (the threshold rule does not project it)")
        elif chosen.selection.k == 0:
            site_decision(chosen.record, Action.SKIPPED, "k = 0 (projecting onto nothing would cut the layer off "
                                                         "its input)")
        elif not saves_parameters(chosen):
            site_decision(chosen.record, Action.SKIPPED,
                          f"rank {chosen.selection.k} of {chosen.site.dim} would not reduce parameters")
        else:
            candidates.append(chosen)
        record.sites.append(chosen.record)
    kept = one_rewrite_per_module(candidates)
    for chosen in kept:
        site_decision(chosen.record, Action.PROJECTED)
    return kept


def _worse_than_budget(run: _Run, model: nn.Module, state: dict[str, Any], record: StepRecord) -> str:
    """Why the step breaks the metric budget on the validation slice ("" when it does not, or there is none):
    the evaluation data is only reported, never decided on. The record gets the change against the original on
    the slice with its paired interval, so a reader sees the decision's margin."""
    if run.config.max_metric_drop is None:
        return ""
    metric = run.task.adapter.metric
    after = run.task.measure(model, run.workers, run.task.validation_batches)
    change = paired_change(metric, MetricItems.from_dict(state["original_items"]["validation"]), after)
    record.measured[f"validation_{metric.name}_after"] = metric.value(*after.sums())
    record.measured[f"validation_{metric.name}_change"] = change.to_dict()
    worse = metric.worsening(0.0, change.value)
    if worse <= run.config.max_metric_drop:
        return ""
    return (f"validation {metric.name} worse by {worse:.4f} than the original's (95% paired interval of the change "
            f"[{change.low:.4f}, {change.high:.4f}]), beyond the budget {run.config.max_metric_drop:.4f}")


def _recover(run: _Run, model: nn.Module, state: dict[str, Any], steps_done: int) -> nn.Module:
    """The recovery pass: distill the compressed model against the original, on fresh shuffles of the training
    data; recorded in ``state["recovery"]`` (metric before and after, losses). A diverging pass is undone."""
    started = time.perf_counter()
    task, workers, metric, recovery = run.task, run.workers, run.metric, run.config.recovery
    before = task.evaluate(model, workers)
    kept = copy.deepcopy(model)
    batches = itertools.chain.from_iterable(task.train_batches(steps_done + 1 + epoch)
                                            for epoch in itertools.count())
    record: dict[str, Any] = {"steps": recovery.steps, f"{metric}_before": before, "outcome": Outcome.KEPT}
    torch.manual_seed(run.config.seed * 100_003 + steps_done + 1)
    try:
        record["distillation"] = distill(model, _frozen_copy(task.model), batches, task.adapter, recovery,
                                         progress=lambda it, total: run.progress(it, total, "recovering"),
                                         workers=workers, validate=task.validation_score(workers, recovery.score))
    except NonFiniteLoss as error:
        model, record["outcome"], record["why"] = kept, Outcome.ROLLED_BACK, str(error)
    record[f"{metric}_after"] = task.evaluate(model, workers)
    record["seconds"] = time.perf_counter() - started
    state["recovery"] = workers.broadcast(record)
    run.say(f"recovery pass against the original ({recovery.steps} steps): {described(record)}, {metric} "
            f"{before:.4f} -> {record[f'{metric}_after']:.4f}")
    return model


def measurements(task: Task, model: nn.Module, workers: Workers,
                 validation: bool) -> tuple[dict[str, Any], dict[str, MetricItems]]:
    """A model's parameters, FLOPs and metric on the evaluation data (and on the validation slice, with
    ``validation``), each metric with its 95% interval; and the per-example measurements, which paired changes
    are computed from (see :func:`paired_changes`)."""
    metric = task.adapter.metric
    items = {"evaluation": task.measure(model, workers)}
    if validation:
        items["validation"] = task.measure(model, workers, task.validation_batches)
    values: dict[str, Any] = {"parameters": count_parameters(model)}
    for where, measured in items.items():
        key = metric.name if where == "evaluation" else f"validation_{metric.name}"
        interval = metric_interval(metric, measured)
        values[key], values[f"{key}_interval"] = interval.value, [interval.low, interval.high]
    values["flops"] = task.flops(model)
    return values, items


def paired_changes(task: Task, original_items: dict[str, dict],
                   items: dict[str, MetricItems]) -> dict[str, dict[str, Any]]:
    """The change of the metric from the original's per-example measurements (``MetricItems.to_dict`` form) to
    ``items`` on each measured set, with its paired 95% interval."""
    metric = task.adapter.metric
    return {where: paired_change(metric, MetricItems.from_dict(original_items[where]), after).to_dict()
            for where, after in items.items()}


def _final_report(run: _Run, model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    task, original, metric = run.task, state["original"], run.task.adapter.metric
    final, items = measurements(task, model, run.workers, run.config.decides)
    return {
        "format": checkpoint.RUN_FORMAT, "metric": asdict(metric),
        "original": original, "final": final,
        "parameter_reduction": 1 - final["parameters"] / original["parameters"],
        f"{metric.name}_change": final[metric.name] - original[metric.name],
        "changes": paired_changes(task, state["original_items"], items),
        "stopped": state.get("stopped"), "steps": state["steps"], "rewrites": state["rewrites"],
        "recovery": state.get("recovery"), "rank_plan": state.get("rank_plan"),
    }
