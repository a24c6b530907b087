"""Calibration: stream each site's activations into covariance accumulators, sum them over the ranks, select
every site's subspace.

:func:`calibrate_and_select` is the one path from a model and calibration batches to per-site selections: the
loop's steps, the rank planner, ``rmtkd spectrum`` and the baselines all go through it. The O(d²) statistics
live in the :class:`Calibration` that :func:`calibrate` returns (never on the sites), and are dropped once the
selections are made. Sites are found by ``rmtkd.sites`` (one traced forward pass). Padding tokens are masked
out with the batch's attention mask wherever the activation's leading dimensions are the mask's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol

import torch
from torch import Tensor, nn

from rmtkd.distributed import SINGLE, Workers
from rmtkd.sites import Include, Site, find_sites
from rmtkd.spectral import NOISE_ESTIMATORS, THRESHOLDS, DesignEffectEstimator, SubspaceSelection, select_subspace
from rmtkd.spectral.plot import plot_spectrum
from rmtkd_kernels import CovarianceAccumulator

Forward = Callable[[nn.Module, dict], Any]
N_EFF_RULES = ("tokens", "sequences", "design-effect")
PLOTS = "plots"  # a run's folder of spectrum plots: <out>/plots/<site>.png


class Runs(Protocol):
    """What calibration needs of a model adapter: how to run the model, and which batch key masks padding."""

    mask_key: Optional[str]

    def forward(self, model: nn.Module, batch: dict) -> Any: ...


def discover_sites(model: nn.Module, batch: dict, forward: Forward, include: Include = lambda n, m: True) -> list[Site]:
    """The compression sites of ``model``, in forward order, from one forward pass over ``batch``."""
    return find_sites(model, lambda: forward(model, batch), include)


@dataclass(frozen=True)
class SelectionConfig:
    """How a site's subspace is selected (see rmtkd.spectral.select_subspace).

    ``tau`` is the quantile noise rule's quantile and ``alpha`` the Tracy–Widom false-alarm rate: each may be
    set only with the rule that uses it (None: that rule's default, 0.5 and 0.01).
    """

    noise: str = "debiased_median"
    threshold: str = "mp_edge"
    tau: Optional[float] = None
    alpha: Optional[float] = None
    n_eff: str = "tokens"  # "tokens" | "sequences" | "design-effect" (see effective_samples)

    def __post_init__(self) -> None:
        if self.noise not in NOISE_ESTIMATORS:
            raise ValueError(f"noise: expected one of {NOISE_ESTIMATORS}, got {self.noise!r}")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold: expected one of {THRESHOLDS}, got {self.threshold!r}")
        if self.n_eff not in N_EFF_RULES:
            raise ValueError(f"n_eff: expected one of {N_EFF_RULES}, got {self.n_eff!r}")
        if self.tau is not None and self.noise != "quantile":
            raise ValueError(f"tau: only the 'quantile' noise rule uses τ, and the noise rule is {self.noise!r}; "
                             "choose the quantile rule (--noise quantile) or leave τ unset")
        if self.alpha is not None and self.threshold != "tracy_widom":
            raise ValueError(f"alpha: only the 'tracy_widom' threshold uses α, and the threshold is "
                             f"{self.threshold!r}; choose it (--threshold tracy_widom) or leave α unset")

    def options(self) -> dict[str, float]:
        """The rule parameters that were set, as select_subspace's keyword arguments."""
        return ({"tau": self.tau} if self.tau is not None else {}) | (
            {"alpha": self.alpha} if self.alpha is not None else {})


@dataclass
class SiteStatistics:
    """One site's calibration statistics: its covariance accumulator, and the design-effect estimator if asked."""

    accumulator: CovarianceAccumulator
    design_effect: Optional[DesignEffectEstimator] = None

    def holders(self) -> list[Any]:
        """The objects whose statistics() vectors are summed over the ranks."""
        return [self.accumulator] + ([self.design_effect] if self.design_effect is not None else [])


@dataclass
class Calibration:
    """What :func:`calibrate` measured: every site's statistics (by site name), batches and sequences seen."""

    sites: list[Site]
    statistics: dict[str, SiteStatistics] = field(default_factory=dict)
    batches: int = 0
    sequences: int = 0

    def of(self, site: Site) -> SiteStatistics:
        return self.statistics[site.name]

    def reduce(self, workers: Workers) -> "Calibration":
        """Sum the statistics over the ranks, in place: one broadcast of the shifts (every rank re-expresses its
        statistics relative to rank 0's) and one all-reduce of everything else, the sequence count included."""
        if not workers.distributed:
            return self
        stats = [self.of(site) for site in self.sites]
        shifts = workers.broadcast([s.accumulator.shift.cpu() for s in stats])
        for s, shift in zip(stats, shifts):
            s.accumulator.recenter(shift.to(s.accumulator.device))
        holders = [holder for s in stats for holder in s.holders()]
        parts = [holder.statistics().cpu().to(torch.float64) for holder in holders]
        flat = workers.all_sum(torch.cat(parts + [torch.tensor([float(self.sequences)], dtype=torch.float64)]))
        offset = 0
        for holder, part in zip(holders, parts):
            holder.load_statistics(flat[offset:offset + part.numel()])
            offset += part.numel()
        self.sequences = int(flat[-1])
        return self


def examples_in(batches: Iterable[dict]) -> int:
    """How many examples (sequences, images) the batches hold: the length of each batch's first entry."""
    return sum(len(next(iter(batch.values()))) for batch in batches)


def _rows_and_mask(site: Site, observed: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """The activation as (..., d) rows and the padding mask over its leading dims, if it applies."""
    rows = site.rows(observed)
    return rows, mask if mask is not None and tuple(mask.shape) == tuple(rows.shape[:-1]) else None


def _observe(model: nn.Module, site: Site, stats: SiteStatistics, state: dict[str, Optional[Tensor]]) -> Any:
    """Hook the site's first member so that every activation it sees goes into ``stats``; returns the handle."""
    def observe(x: Tensor) -> None:
        rows, mask = _rows_and_mask(site, x.detach(), state["mask"])
        stats.accumulator.update(rows, mask)
        if stats.design_effect is not None and rows.dim() == 3:
            stats.design_effect.update(rows, mask)

    first = site.members(model)[0]
    if site.observes == "output":
        return first.register_forward_hook(lambda _m, _i, out: observe(out))
    return first.register_forward_pre_hook(lambda _m, inputs: observe(inputs[0]))


def calibrate(
    model: nn.Module,
    batches: Iterable[dict],
    forward: Forward,
    sites: list[Site],
    *,
    mask_key: Optional[str] = "attention_mask",
    estimate_design_effect: bool = False,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> Calibration:
    """Stream every batch through the model into fresh accumulators for ``sites`` (found by discover_sites).

    ``forward(model, batch)`` runs the model; ``batch[mask_key]`` (batch, seq), if present, marks real tokens.
    Activations of shape (batch, seq, d) feed the design-effect estimator (tokens grouped by sequence) if asked.
    """
    calibration = Calibration(sites=sites)
    state: dict[str, Optional[Tensor]] = {"mask": None}
    handles = []
    for site in sites:
        device = next(site.members(model)[0].parameters()).device
        stats = calibration.statistics[site.name] = SiteStatistics(
            CovarianceAccumulator(site.dim, device=device),
            DesignEffectEstimator(site.dim, device=device) if estimate_design_effect else None)
        handles.append(_observe(model, site, stats, state))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in progress(batches):
                mask = batch.get(mask_key) if mask_key else None
                state["mask"] = mask.to(dtype=torch.bool) if mask is not None else None
                forward(model, batch)
                calibration.batches += 1
                calibration.sequences += examples_in([batch])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if calibration.batches == 0:
        raise ValueError("batches: the calibration set is empty; at least one batch is needed")
    return calibration


def effective_samples(stats: SiteStatistics, how: str, sequences: int) -> Optional[float]:
    """n_eff for a site's selection: None (every token a sample), the sequence count, or tokens / design effect.

    "design-effect" needs the site calibrated with ``estimate_design_effect=True``.
    """
    if how == "tokens":
        return None
    if how == "sequences":
        return float(min(sequences, stats.accumulator.count))
    if how == "design-effect" and stats.design_effect is not None:
        return stats.design_effect.n_eff()
    raise ValueError(f"n_eff: expected one of {N_EFF_RULES} (design-effect only after a calibration that "
                     f"estimated it), got {how!r}")


@dataclass
class SiteSelection:
    """A site's selected subspace and its JSON-ready record (the site, d, k, σ², threshold, parameters now and
    after projecting to k, the plot)."""

    site: Site
    selection: SubspaceSelection
    record: dict[str, Any]

    @property
    def saving(self) -> int:
        """Parameters the projection to k would save (negative where it would add some)."""
        return self.record["parameters_before"] - self.record["parameters_after"]


def select_site(model: nn.Module, site: Site, stats: SiteStatistics, config: SelectionConfig, sequences: int,
                out_dir: Optional[Path] = None, rank: Optional[int] = None) -> SiteSelection:
    """Select a calibrated site's subspace. With ``out_dir`` (a run's folder) the spectrum is plotted to
    out_dir/plots/<site>.png; with ``rank``, k is that rank (a budget's) instead of the rule's. Errors (NaN/Inf
    activations, too few samples) name the site."""
    try:
        selection = select_subspace(stats.accumulator, noise=config.noise, threshold=config.threshold,
                                    n_eff=effective_samples(stats, config.n_eff, sequences), rank=rank,
                                    **config.options())
    except ValueError as error:
        raise ValueError(f"site {site.name}: {error}") from None
    before, after = site.parameters(model, max(selection.k, 1))
    record = {"site": site.name, "kind": site.kind, "modules": site.names, **selection.to_dict(),
              "parameters_before": before, "parameters_after": after}
    record.pop("kept_eigenvalues")
    if out_dir is not None:
        record["plot"] = f"{PLOTS}/{site.file_stem}.png"
        plot_spectrum(selection, Path(out_dir) / record["plot"], title=site.name)
    return SiteSelection(site, selection, record)


def calibrate_and_select(model: nn.Module, sites: list[Site], batches: list[dict], adapter: Runs,
                         config: SelectionConfig, *, workers: Workers = SINGLE,
                         ranks: Optional[Mapping[str, int]] = None, plots: Optional[Path] = None,
                         progress: Callable[[Iterable], Iterable] = lambda it: it) -> list[SiteSelection]:
    """Calibrate ``sites`` of ``model`` on every rank's shard of ``batches``, sum the statistics over the ranks
    and select each site's subspace (rank 0's selections on every rank; the statistics are then dropped).

    ``ranks`` fixes k for the sites it names (a rank budget's, or a baseline's); ``plots`` (a run's folder, read
    on rank 0 only) receives one spectrum plot per site. A ValueError on any rank is raised on every rank.
    """
    if not sites:
        return []
    calibration = workers.together(lambda: calibrate(
        model, batches, adapter.forward, sites, mask_key=adapter.mask_key,
        estimate_design_effect=config.n_eff == "design-effect", progress=progress))
    calibration.reduce(workers)
    plots = plots if workers.is_main else None
    chosen = workers.together(lambda: [
        select_site(model, site, calibration.of(site), config, calibration.sequences, plots,
                    rank=(ranks or {}).get(site.name)) for site in sites])
    return [SiteSelection(site, chosen.selection, chosen.record)  # this rank's own site objects
            for site, chosen in zip(sites, workers.broadcast(chosen))]
