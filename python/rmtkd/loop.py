"""The RMT-KD loop: calibrate → select → project → self-distill → evaluate, one site (or block) at a time.

Steps go shallow to deep in forward order. A step's teacher is the model as it was before the step (a frozen
copy), so a step that breaks the metric budget or whose distillation diverges is rolled back by keeping that
copy. The loop stops at the parameter target or when every site has been tried. After every step the model,
the applied rewrites and the report are checkpointed (atomically); re-running on the same output folder
resumes after the last completed step. Each step seeds torch with (seed, step) before it runs, so a resumed
run reaches the same weights as an uninterrupted one.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from rmtkd.adapters.base import ModelAdapter
from rmtkd.atomic import write_text_atomically
from rmtkd.calibration import SelectionConfig, calibrate, discover_sites, select_site
from rmtkd.distill import DistillConfig, NonFiniteLoss, distill
from rmtkd.distributed import Workers
from rmtkd.metrics import count_parameters, flops_by_module, forward_flops
from rmtkd.persistence import load_compressed, read_meta, save_compressed
from rmtkd.rank_budget import Budget, LinearCost, SiteCost, plan_ranks
from rmtkd.sites import Site
from rmtkd.spectral import SubspaceSelection
from rmtkd.surgery import Rewrite, apply_structure, rewrite_site

CHECKPOINT = "checkpoint"
LOOP_STATE_KEYS = {"fingerprint", "next_step", "rewrites", "steps", "original"}  # what a checkpoint's state holds


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
        """A hash of the settings that decide the run's result; settings added later are left out at the values
        that mean "as before", so a run folder made before them still resumes."""
        settings = asdict(self) | {"distill": self.distill.settings()}
        if self.recovery is None:
            del settings["recovery"]
        else:
            settings["recovery"] = self.recovery.settings()
        if self.ranks == "rule":
            del settings["ranks"]
        if self.target_flop_reduction is None:
            del settings["target_flop_reduction"]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Task:
    """A model, its adapter and its data, as the loop needs them. Batches are dicts of tensors.

    The loop decides only on ``validation_batches`` (held-out training data, disjoint from the calibration and
    distillation data): they are needed when a decision is asked for (``max_metric_drop``, early stopping).
    ``eval_batches`` are only measured and reported, never steered on.
    """

    adapter: ModelAdapter
    model: nn.Module
    train_batches: Callable[[int], Iterable[dict]]  # seed -> training batches for distillation
    calibration_batches: list[dict]
    eval_batches: list[dict]
    validation_batches: list[dict] = field(default_factory=list)


def _step_groups(sites: list[Site], task: Task, granularity: str) -> list[list[Site]]:
    if granularity == "site":
        return [[site] for site in sites]
    groups: dict[str, list[Site]] = {}
    for site in sites:
        groups.setdefault(task.adapter.block_of(site), []).append(site)
    return list(groups.values())


def find_task_sites(model: nn.Module, task: Task) -> list[Site]:
    """The compression sites the task's adapter includes, from one forward pass over a calibration batch."""
    return discover_sites(model, task.calibration_batches[0], task.adapter.forward, task.adapter.include)


def _save(path: Path, model: nn.Module, task: Task, state: dict[str, Any], extra: dict[str, Any]) -> None:
    save_compressed(model, [Rewrite.from_dict(r) for r in state["rewrites"]], path,
                    task.adapter.architecture(task.model), extra=extra, write_assets=task.adapter.save_assets)


def _resume(out_dir: Path, task: Task, fingerprint: str) -> Optional[tuple[nn.Module, dict[str, Any]]]:
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    state = read_meta(path).get("loop")
    if not isinstance(state, dict) or not LOOP_STATE_KEYS <= set(state):
        raise ValueError(f"out_dir: {path} is not a checkpoint of this rmtkd (its rmtkd.json has no loop state "
                         f"with {sorted(LOOP_STATE_KEYS)}); use another folder")
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"out_dir: {out_dir} holds a run with different settings (fingerprint "
                         f"{state['fingerprint']}, this run {fingerprint}); use another folder")
    model, _ = load_compressed(path, task.adapter.build)
    device = next(task.model.parameters()).device
    return model.to(device), state


def _resumed(out_dir: Path, task: Task, fingerprint: str,
             workers: Workers) -> Optional[tuple[nn.Module, dict[str, Any]]]:
    """The checkpoint, read by rank 0 and sent to every rank (so only rank 0 needs the output folder)."""
    resumed = workers.together(lambda: _resume(out_dir, task, fingerprint) if workers.is_main else None)
    state = workers.broadcast(resumed[1] if resumed is not None else None)
    if state is None:
        return None
    ranks = state.get("world_size", 1)
    if ranks != workers.world_size:
        raise ValueError(f"out_dir: {out_dir / CHECKPOINT} was made by {ranks} process(es) and this run has "
                         f"{workers.world_size}; resume with {ranks} (each process's data shard depends on it), or "
                         "use another folder")
    if workers.is_main:
        model = resumed[0]
    else:
        model = copy.deepcopy(task.model)
        for data in state["rewrites"]:
            apply_structure(model, Rewrite.from_dict(data))
    return workers.broadcast_module(model), state


def _check_data(task: Task, config: LoopConfig) -> None:
    """Every process needs data of its own to calibrate and evaluate on, and validation data where it decides."""
    needed = ("calibration_batches", "eval_batches") + (("validation_batches",) if _decides(config) else ())
    for name in needed:
        if len(getattr(task, name)) == 0:
            why = (" (max_metric_drop and early stopping decide on held-out training data, never on the "
                   "evaluation data)" if name == "validation_batches" else "")
            raise ValueError(f"task.{name}: this process's share of the data is empty{why}; give every process some")


def _decides(config: LoopConfig) -> bool:
    """Whether the loop makes decisions on measured metrics (and so needs validation data)."""
    return (config.max_metric_drop is not None or config.distill.check_every > 0
            or (config.recovery is not None and config.recovery.check_every > 0))


def _validation_score(task: Task, workers: Workers, score: str) -> Callable[[nn.Module], float]:
    """Early stopping's score of a model on the validation slice, lower is better: its task loss per item
    (``score`` "loss") or its metric ("metric")."""
    if score == "loss":
        def loss(model: nn.Module) -> float:
            total, count = workers.sum(task.adapter.loss_sums(model, task.validation_batches))
            return total / count
        return loss
    return lambda model: task.adapter.metric.worsening(0.0, _evaluate(model, task, workers, task.validation_batches))


def compress(task: Task, config: LoopConfig, out_dir: str | Path, *,
             progress: Callable[[Iterable, int, str], Iterable] = lambda it, total, desc: it,
             log: Callable[[str], None] = print, group: Optional[Any] = None) -> tuple[nn.Module, dict[str, Any]]:
    """Run (or resume) RMT-KD on ``task``: (compressed model, report); the report also goes to out_dir.

    ``task.model`` is left as it was: the loop works on a copy. With ``group`` (an initialised torch.distributed
    process group) every rank calls this with its own shard of the data in ``task``: the calibration statistics
    and the evaluation sums are summed over the ranks, distillation runs under DistributedDataParallel, rank 0
    decides and is the only one that logs and writes; every rank returns the same model and report.
    """
    workers = Workers(group)
    out_dir = Path(out_dir)
    say = log if workers.is_main else (lambda message: None)
    fingerprint = config.fingerprint()
    workers.agree(fingerprint, "settings (the loop's fingerprint)")
    workers.together(lambda: _check_data(task, config))
    if workers.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    resumed = _resumed(out_dir, task, fingerprint, workers)
    original = task.model
    original_params = count_parameters(original)
    metric = task.adapter.metric.name
    groups = _step_groups(find_task_sites(original, task), task, config.granularity)
    if resumed is None:
        model = copy.deepcopy(original)
        state: dict[str, Any] = {
            "fingerprint": fingerprint, "next_step": 0, "rewrites": [], "steps": [],
            "world_size": workers.world_size,
            "original": workers.broadcast({"parameters": original_params, metric: _evaluate(model, task, workers),
                                           "flops": _flops(model, task)}),  # rank 0's FLOPs (its first batch)
        }
        if _decides(config):
            state["original"][f"validation_{metric}"] = _evaluate(model, task, workers, task.validation_batches)
        say(f"original: {original_params:,} parameters, {metric} {state['original'][metric]:.4f}")
        if config.ranks == "budget":
            plan = state["rank_plan"] = _plan_ranks(model, groups, task, config, progress, workers)
            flops = "" if "flop_target" not in plan else (f", {plan['flops']:,} FLOPs on a calibration batch "
                                                           f"(target {plan['flop_target']:,})")
            say(f"rank budget: {len(plan['ranks'])} sites planned to {plan['parameters']:,} parameters (target "
                f"{plan['target']:,}){flops}: ranks {sorted(set(plan['ranks'].values()))}")
    else:
        model, state = resumed
        say(f"resuming after step {state['next_step']} of {len(groups)} from {out_dir / CHECKPOINT}")
        if _decides(config) and f"validation_{metric}" not in state["original"]:  # a checkpoint from before
            state["original"][f"validation_{metric}"] = _evaluate(original, task, workers, task.validation_batches)
    # The threshold rule stops at the target; a rank budget is planned to meet it after its last step.
    target = (None if config.target_reduction is None or config.ranks == "budget"
              else original_params * (1 - config.target_reduction))
    for index in range(state["next_step"], len(groups)):
        if target is not None and count_parameters(model) <= target:
            state["stopped"] = f"parameter target reached ({count_parameters(model):,} <= {target:,.0f})"
            break
        torch.manual_seed(config.seed * 100_003 + index)
        model, record = _run_step(model, groups[index], task, config, state, progress, out_dir, workers)
        state["steps"].append(workers.broadcast(record))  # rank 0's timings and FLOPs in every rank's report
        state["next_step"] = index + 1
        if workers.is_main:
            _save(out_dir / CHECKPOINT, model, task, state, extra={"loop": state})
        workers.barrier()
        say(f"step {index + 1}/{len(groups)} {groups[index][0].name}{'…' if len(groups[index]) > 1 else ''}: "
            f"{record['outcome']}, parameters {record['parameters_after']:,}, {metric} "
            f"{record.get(f'{metric}_after', float('nan')):.4f}")
    else:
        state.setdefault("stopped", "every site tried")
    if config.recovery is not None and state["rewrites"] and "recovery" not in state:
        model = _recover(model, task, config, state, len(groups), progress, say, workers)
        if workers.is_main:
            _save(out_dir / CHECKPOINT, model, task, state, extra={"loop": state})
        workers.barrier()
    report = workers.broadcast(_final_report(model, task, state, workers))
    if workers.is_main:
        write_text_atomically(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
        _save(out_dir / "model", model, task, state, extra={"report": {k: report[k] for k in ("original", "final")}})
    workers.barrier()
    return model, report


def _run_step(model: nn.Module, group: list[Site], task: Task, config: LoopConfig, state: dict[str, Any],
              progress, out_dir: Path, workers: Workers) -> tuple[nn.Module, dict[str, Any]]:
    """One step on ``group``; returns the model to continue with (the student, or the teacher on rollback)."""
    started = time.perf_counter()
    params_before = count_parameters(model)
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    current = {name for r in state["rewrites"] for name in r["names"]}
    group = [s for s in group if not set(s.names) & current]
    adapter = task.adapter
    calibration = workers.together(lambda: calibrate(
        model, task.calibration_batches, adapter.forward, group, mask_key=adapter.mask_key,
        estimate_design_effect=config.selection.n_eff == "design-effect",
        progress=lambda it: progress(it, len(task.calibration_batches), "calibrating")))
    workers.reduce_statistics(group)
    sequences = int(workers.sum([calibration.sequences])[0])
    plots = out_dir if workers.is_main else None
    plan = state.get("rank_plan", {}).get("ranks")
    selections = workers.broadcast(workers.together(
        lambda: [select_site(model, site, config.selection, sequences, plots,
                             rank=plan.get(site.name) if plan else None) for site in group]))
    decisions, candidates = [], []
    for site, (selection, decision) in zip(group, selections):
        if plan is not None and site.name not in plan:
            decision["action"] = "skipped: the rank budget leaves it dense (the threshold rule does not project it)"
        elif selection.k == 0:
            decision["action"] = "skipped: k = 0 (projecting onto nothing would cut the layer off its input)"
        elif decision["parameters_after"] >= decision["parameters_before"]:
            decision["action"] = f"skipped: rank {selection.k} of {site.dim} would not reduce parameters"
        else:
            candidates.append((site, selection, decision))
        decisions.append(decision)
    rewrites = []
    for site, selection, decision in _one_rewrite_per_module(candidates):
        rewrites.append(rewrite_site(model, site, selection.basis.float(), selection.mean))
        decision["action"] = "projected"
    record: dict[str, Any] = {"step": state["next_step"] + 1, "sites": decisions, "parameters_before": params_before}
    for site in group:
        site.accumulator = None  # the O(d²) statistics are no longer needed
    if not rewrites:
        record.update(outcome="nothing to compress", parameters_after=params_before,
                      seconds=time.perf_counter() - started)
        return model, record
    metric = adapter.metric
    projected = _evaluate(model, task, workers)
    try:
        record["distillation"] = distill(model, teacher, task.train_batches(state["next_step"]), adapter,
                                         config.distill, progress=lambda it, total: progress(it, total, "distilling"),
                                         workers=workers,
                                         validate=_validation_score(task, workers, config.distill.score))
    except NonFiniteLoss as error:
        return _rolled_back(record, teacher, f"rolled back: {error}", started, params_before)
    after = _evaluate(model, task, workers)
    record.update({f"{metric.name}_projected": projected, f"{metric.name}_after": after,
                   "parameters_after": count_parameters(model), "flops_after": _flops(model, task)})
    if config.max_metric_drop is not None:  # on the validation slice: the evaluation data is only reported
        validation = record[f"validation_{metric.name}_after"] = _evaluate(model, task, workers,
                                                                         task.validation_batches)
        worse = metric.worsening(state["original"][f"validation_{metric.name}"], validation)
        if worse > config.max_metric_drop:
            return _rolled_back(record, teacher, f"rolled back: validation {metric.name} worse by {worse:.4f} than "
                                f"the original's, beyond the budget {config.max_metric_drop:.4f}", started,
                                params_before)
    state["rewrites"].extend(r.to_dict() for r in rewrites)
    record.update(outcome="kept", seconds=time.perf_counter() - started)
    return model, record


def _recover(model: nn.Module, task: Task, config: LoopConfig, state: dict[str, Any], steps_done: int, progress,
             say: Callable[[str], None], workers: Workers) -> nn.Module:
    """The recovery pass: distill the compressed model against the original, on fresh shuffles of the training
    data; recorded in ``state["recovery"]`` (metric before and after, losses). A diverging pass is undone."""
    started = time.perf_counter()
    metric = task.adapter.metric.name
    before = _evaluate(model, task, workers)
    kept = copy.deepcopy(model)
    teacher = copy.deepcopy(task.model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    batches = itertools.chain.from_iterable(task.train_batches(steps_done + 1 + epoch)
                                            for epoch in itertools.count())
    record: dict[str, Any] = {"steps": config.recovery.steps, f"{metric}_before": before}
    torch.manual_seed(config.seed * 100_003 + steps_done + 1)
    try:
        record["distillation"] = distill(model, teacher, batches, task.adapter, config.recovery,
                                         progress=lambda it, total: progress(it, total, "recovering"),
                                         workers=workers,
                                         validate=_validation_score(task, workers, config.recovery.score))
    except NonFiniteLoss as error:
        model, record["outcome"] = kept, f"undone: {error}"
    else:
        record["outcome"] = "kept"
    record[f"{metric}_after"] = _evaluate(model, task, workers)
    record["seconds"] = time.perf_counter() - started
    state["recovery"] = workers.broadcast(record)
    say(f"recovery pass against the original ({config.recovery.steps} steps): {record['outcome']}, {metric} "
        f"{before:.4f} -> {record[f'{metric}_after']:.4f}")
    return model


def _plan_ranks(model: nn.Module, groups: list[list[Site]], task: Task, config: LoopConfig, progress,
                workers: Workers) -> dict[str, Any]:
    """The rank budget: every site calibrated on the model as it is, the sites the threshold rule would project
    (one per module, as the steps choose), and their ranks planned to meet the target; JSON-ready, with what the
    rule alone would keep, for the report."""
    sites = [site for group in groups for site in group]
    calibration = workers.together(lambda: calibrate(
        model, task.calibration_batches, task.adapter.forward, sites, mask_key=task.adapter.mask_key,
        estimate_design_effect=config.selection.n_eff == "design-effect",
        progress=lambda it: progress(it, len(task.calibration_batches), "calibrating every site")))
    workers.reduce_statistics(sites)
    sequences = int(workers.sum([calibration.sequences])[0])
    selections = workers.broadcast(workers.together(
        lambda: [select_site(model, site, config.selection, sequences) for site in sites]))
    for site in sites:
        site.accumulator = None
    candidates = [(site, selection, decision) for site, (selection, decision) in zip(sites, selections)
                  if 0 < selection.k and decision["parameters_after"] < decision["parameters_before"]]
    chosen = _one_rewrite_per_module(candidates)
    capped = config.target_flop_reduction is not None  # FLOPs are counted (on two copies) only for a FLOP cap
    total_flops, flops = (workers.broadcast(_site_flops(model, [site for site, _, _ in chosen], task)) if capped
                          else (None, {}))
    costs, rule = [], {}
    for site, selection, decision in chosen:
        dense, one = site.parameters(model, 1)
        per_rank = site.parameters(model, 2)[1] - one
        costs.append(SiteCost(site.name, selection.eigenvalues, selection.edge,
                              LinearCost(one - per_rank, per_rank, dense), flops.get(site.name, LinearCost(0, 0, 0))))
        rule[site.name] = selection.k
    total = count_parameters(model)
    flop_target = int(total_flops * (1 - config.target_flop_reduction)) if capped else None
    plan = plan_ranks(costs, Budget(total, total_flops),
                      Budget(int(total * (1 - config.target_reduction)), flop_target))
    sites = []
    for cost in costs:
        if cost.name in plan.ranks:
            k = plan.ranks[cost.name]
            sites.append({"site": cost.name, "d": int(cost.eigenvalues.size), "k": k,
                          "variance_kept": cost.variance_kept(k), "rule_k": rule[cost.name],
                          "rule_variance_kept": cost.variance_kept(rule[cost.name]),
                          "parameters_before": cost.parameters.dense, "parameters_after": cost.parameters.at(k)}
                         | ({"flops_before": cost.flops.dense, "flops_after": cost.flops.at(k)} if capped else {}))
    return {"ranks": plan.ranks, "parameters": plan.parameters, "target": plan.target.parameters,
            "strength": plan.strength, "sites": sites} | (
        {"flops": plan.flops, "flops_before": total_flops, "flop_target": flop_target, "flop_price": plan.flop_price}
        if capped else {})


def _site_flops(model: nn.Module, sites: list[Site], task: Task) -> tuple[int, dict[str, LinearCost]]:
    """The model's forward FLOPs on the first calibration batch, and what each site's modules take of them, dense
    and at any rank: counted, not modelled, on copies rebuilt at ranks 1 and 2 (a FLOP count is linear in the
    rank), so every site kind, stride and table lookup is counted as torch counts it."""
    def counted(rank: Optional[int]) -> tuple[int, dict[str, int]]:
        copied = model if rank is None else copy.deepcopy(model)
        for site in sites if rank is not None else ():
            site.rebuild(copied, rank)
        return flops_by_module(copied, task.adapter.forward, task.calibration_batches[0])

    (total, dense), (_, one), (_, two) = counted(None), counted(1), counted(2)

    def site_flops(counts: dict[str, int], site: Site) -> int:
        return sum(counts.get(name, 0) for name in site.names)

    costs = {}
    for site in sites:
        per_rank = site_flops(two, site) - site_flops(one, site)
        costs[site.name] = LinearCost(site_flops(one, site) - per_rank, per_rank, site_flops(dense, site))
    if sites and not any(cost.per_rank for cost in costs.values()):
        raise ValueError("target_flop_reduction: torch's FLOP counter attributes no FLOPs to the sites' modules in "
                         "this model's forward (is the adapter's forward calling the model itself?); leave the FLOP "
                         "cap unset")
    return total, costs


Candidate = tuple[Site, SubspaceSelection, dict[str, Any]]  # a site that would save parameters, with its decision


def _one_rewrite_per_module(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates to rewrite, in their order: where two would rewrite the same module (a narrowing Linear is
    a site on its input side and on its output side), the one that saves more parameters; the other's decision
    says why it was not."""
    def saving(candidate: Candidate) -> int:
        return candidate[2]["parameters_before"] - candidate[2]["parameters_after"]

    kept: list[Candidate] = []
    for candidate in sorted(candidates, key=saving, reverse=True):
        site, _, decision = candidate
        winner = next((other for other in kept if set(other[0].names) & set(site.names)), None)
        if winner is None:
            kept.append(candidate)
            continue
        module = sorted(set(winner[0].names) & set(site.names))[0]
        decision["action"] = (f"skipped: {module} is projected on its {winner[0].observes} side, which saves more "
                              f"parameters ({saving(winner):,} against {saving(candidate):,})")
    kept_ids = {id(candidate) for candidate in kept}
    return [candidate for candidate in candidates if id(candidate) in kept_ids]


def _evaluate(model: nn.Module, task: Task, workers: Workers, batches: Optional[list[dict]] = None) -> float:
    """The metric over every rank's shard of ``batches`` (default: the evaluation data)."""
    total, count = workers.sum(task.adapter.evaluation_sums(model, task.eval_batches if batches is None else batches))
    return task.adapter.metric.value(total, count)


def _flops(model: nn.Module, task: Task) -> int:
    return forward_flops(model, task.adapter.forward, task.eval_batches[0])


def teacher_to_model(teacher: nn.Module) -> nn.Module:
    """The frozen pre-step copy, made trainable again to continue the loop with."""
    for p in teacher.parameters():
        p.requires_grad_(True)
    return teacher


def _rolled_back(record: dict[str, Any], teacher: nn.Module, outcome: str, started: float,
                 params_before: int) -> tuple[nn.Module, dict[str, Any]]:
    """The model before the step (the teacher) is kept; the record says why."""
    record.update(outcome=outcome, parameters_after=params_before, seconds=time.perf_counter() - started)
    return teacher_to_model(teacher), record


def _final_report(model: nn.Module, task: Task, state: dict[str, Any], workers: Workers) -> dict[str, Any]:
    params = count_parameters(model)
    original, metric = state["original"], task.adapter.metric
    final = {"parameters": params, metric.name: _evaluate(model, task, workers), "flops": _flops(model, task)}
    if f"validation_{metric.name}" in original:
        final[f"validation_{metric.name}"] = _evaluate(model, task, workers, task.validation_batches)
    return {
        "metric": asdict(metric),
        "original": original, "final": final,
        "parameter_reduction": 1 - params / original["parameters"],
        f"{metric.name}_change": final[metric.name] - original[metric.name],
        "stopped": state.get("stopped"), "steps": state["steps"], "rewrites": state["rewrites"],
        "recovery": state.get("recovery"), "rank_plan": state.get("rank_plan"),
    }
