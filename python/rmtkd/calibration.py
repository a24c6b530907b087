"""Calibration: stream each site's activations into a covariance accumulator, then select its subspace.

Sites are found by ``rmtkd.sites`` (one traced forward pass). Padding tokens are masked out with the batch's
attention mask wherever the activation's leading dimensions are the mask's. Nothing but O(d²) statistics is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from rmtkd.sites import Include, Site, find_sites
from rmtkd.spectral import NOISE_ESTIMATORS, THRESHOLDS, DesignEffectEstimator, SubspaceSelection, select_subspace
from rmtkd.spectral.plot import plot_spectrum
from rmtkd_kernels import CovarianceAccumulator

Forward = Callable[[nn.Module, dict], Any]
N_EFF_RULES = ("tokens", "sequences", "design-effect")
PLOTS = "plots"  # a run's folder of spectrum plots: <out>/plots/<site>.png


def discover_sites(model: nn.Module, batch: dict, forward: Forward, include: Include = lambda n, m: True) -> list[Site]:
    """The compression sites of ``model``, in forward order, from one forward pass over ``batch``."""
    return find_sites(model, lambda: forward(model, batch), include)


@dataclass
class Calibration:
    sites: list[Site]
    batches: int = 0
    sequences: int = 0


def _rows_and_mask(site: Site, observed: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """The activation as (..., d) rows and the padding mask over its leading dims, if it applies."""
    rows = site.rows(observed)
    return rows, mask if mask is not None and tuple(mask.shape) == tuple(rows.shape[:-1]) else None


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
    """Stream every batch through the model into fresh accumulators on ``sites`` (found by discover_sites).

    ``forward(model, batch)`` runs the model; ``batch[mask_key]`` (batch, seq), if present, marks real tokens.
    Activations of shape (batch, seq, d) feed the design-effect estimator (tokens grouped by sequence) if asked.
    """
    state: dict[str, Optional[Tensor]] = {"mask": None}
    handles = []
    for site in sites:
        first = site.members(model)[0]
        device = next(first.parameters()).device
        site.accumulator = CovarianceAccumulator(site.dim, device=device)
        site.design_effect = DesignEffectEstimator(site.dim, device=device) if estimate_design_effect else None

        def observe(x: Tensor, site: Site = site) -> None:
            rows, mask = _rows_and_mask(site, x.detach(), state["mask"])
            site.accumulator.update(rows, mask)
            if site.design_effect is not None and rows.dim() == 3:
                site.design_effect.update(rows, mask)

        if site.observes == "output":
            handles.append(first.register_forward_hook(lambda _m, _i, out, observe=observe: observe(out)))
        else:
            handles.append(first.register_forward_pre_hook(lambda _m, inputs, observe=observe: observe(inputs[0])))
    calibration = Calibration(sites=sites)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in progress(batches):
                mask = batch.get(mask_key) if mask_key else None
                state["mask"] = mask.to(dtype=torch.bool) if mask is not None else None
                forward(model, batch)
                calibration.batches += 1
                calibration.sequences += len(next(iter(batch.values())))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if calibration.batches == 0:
        raise ValueError("batches: the calibration set is empty; at least one batch is needed")
    return calibration


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


def effective_samples(site: Site, how: str, sequences: int) -> Optional[float]:
    """n_eff for the site's selection: None (every token a sample), the sequence count, or tokens / design effect.

    "design-effect" needs the site calibrated with ``estimate_design_effect=True``.
    """
    if how == "tokens":
        return None
    if how == "sequences":
        return float(min(sequences, site.accumulator.count))
    if how == "design-effect" and site.design_effect is not None:
        return site.design_effect.n_eff()
    raise ValueError(f"n_eff: expected one of {N_EFF_RULES} (design-effect only after a calibration that "
                     f"estimated it), got {how!r}")


def select_site(model: nn.Module, site: Site, config: SelectionConfig, sequences: int,
                out_dir: Optional[Path] = None, rank: Optional[int] = None) -> tuple[SubspaceSelection, dict[str, Any]]:
    """Select a calibrated site's subspace; (selection, its JSON-ready record: the site, d, k, σ², threshold,
    parameters now and after projecting to k, the plot). With ``out_dir`` (a run's folder) the spectrum is
    plotted to out_dir/plots/<site>.png; with ``rank``, k is that rank (a budget's) instead of the rule's.
    Errors (NaN/Inf activations, too few samples) name the site."""
    options = {"tau": config.tau} if config.tau is not None else {}
    options |= {"alpha": config.alpha} if config.alpha is not None else {}
    try:
        selection = select_subspace(site.accumulator, noise=config.noise, threshold=config.threshold,
                                    n_eff=effective_samples(site, config.n_eff, sequences), rank=rank,
                                    **options)
    except ValueError as error:
        raise ValueError(f"site {site.name}: {error}") from None
    before, after = site.parameters(model, max(selection.k, 1))
    record = {"site": site.name, "kind": site.kind, "modules": site.names, **selection.to_dict(),
              "parameters_before": before, "parameters_after": after}
    record.pop("kept_eigenvalues")
    if out_dir is not None:
        record["plot"] = f"{PLOTS}/{site.file_stem}.png"
        plot_spectrum(selection, Path(out_dir) / record["plot"], title=site.name)
    return selection, record
