"""``rmtkd spectrum``: the first half of RMT-KD (calibrate + select) on every site of a model, with nothing changed.

For every compression site (a Linear group reading one input, an Embedding, a Conv2d) it streams the calibration
examples (padding masked) through a CovarianceAccumulator, selects the directions above the noise threshold and
writes one spectrum plot per site, summary.md (a table of d, k, σ², threshold, variance kept, what projecting
would save) and the rows of report.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Optional

from torch import nn

from rmtkd.calibration import Forward, Include, calibrate, discover_sites, effective_samples
from rmtkd.loop import plot_name
from rmtkd.persistence import write_text_atomically
from rmtkd.spectral import select_subspace
from rmtkd.spectral.plot import plot_spectrum
from rmtkd.surgery import site_parameters


def summarise(rows: list[dict], header: str) -> str:
    lines = [header, "", "| site | d | k | σ² | threshold | variance kept | parameters now → projected |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['site']} | {r['d']} | {r['k']} | {r['sigma2']:.4g} | {r['edge']:.4g} | "
                     f"{100 * r['variance_kept']:.1f}% | {r['parameters_now']:,} → {r['parameters_projected']:,} |")
    return "\n".join(lines)


def write_spectra(model: nn.Module, forward: Forward, include: Include, batches: list[dict], out: Path,
                  args: argparse.Namespace, mask_key: Optional[str], progress: Callable[..., Any],
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Calibrate every site of ``model`` on ``batches``, plot and summarise; returns the report (without paths)."""
    started = time.perf_counter()
    model.eval()
    sites = discover_sites(model, batches[0], forward, include)
    if not sites:
        raise ValueError("--model: no compression site (Linear, Embedding, Conv2d) found in the model")
    log(f"calibrating {len(sites)} sites on {len(batches)} batches")
    calibration = calibrate(model, batches, forward, sites, mask_key=mask_key,
                            estimate_design_effect=args.n_eff == "design-effect",
                            progress=lambda it: progress(it, len(batches), "calibrating"))
    rows = []
    for site in calibration.sites:
        try:
            selection = select_subspace(site.accumulator, noise=args.noise, threshold=args.threshold, tau=args.tau,
                                        alpha=args.alpha, n_eff=effective_samples(site, args.n_eff,
                                                                                  calibration.sequences))
        except ValueError as error:
            raise ValueError(f"site {site.name}: {error}") from None
        now, projected = site_parameters(model, site, max(selection.k, 1))
        plot_spectrum(selection, out / plot_name(site), title=site.name)
        row = {"site": site.name, "kind": site.kind, "modules": site.names, **selection.to_dict(),
               "parameters_now": now, "parameters_projected": projected, "plot": plot_name(site)}
        row.pop("kept_eigenvalues")
        rows.append(row)
    seconds = time.perf_counter() - started
    report = {"examples": calibration.sequences, "samples_per_site": rows[0]["n_samples"], "noise": args.noise,
              "threshold": args.threshold, "n_eff": args.n_eff, "seconds": seconds, "sites": rows}
    header = (f"# RMT spectrum\n\n{calibration.sequences} examples, {report['samples_per_site']:.0f} samples per "
              f"site (tokens or pixels), noise={args.noise}, threshold={args.threshold}, n_eff={args.n_eff}; "
              f"{seconds:.0f} s.")
    write_text_atomically(out / "summary.md", summarise(rows, header) + "\n")
    return report
