"""``rmtkd spectrum``: the first half of RMT-KD (calibrate + select) on every site of a model, with nothing changed.

For every compression site it streams the calibration examples (padding masked) through a CovarianceAccumulator,
selects the directions above the noise threshold and writes one spectrum plot per site, summary.md (a table of
d, k, σ², threshold, variance kept, what projecting would save) and the rows of report.json.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from torch import nn

from rmtkd.adapters.behaviour import ModelBehaviour
from rmtkd.calibration import SelectionConfig, calibrate_and_select, discover_sites, examples_in
from rmtkd.atomic import write_text_atomically


def summarise(rows: list[dict], header: str) -> str:
    lines = [header, "", "| site | d | k | σ² | threshold | variance kept | parameters now → projected |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['site']} | {r['d']} | {r['k']} | {r['sigma2']:.4g} | {r['edge']:.4g} | "
                     f"{100 * r['variance_kept']:.1f}% | {r['parameters_before']:,} → {r['parameters_after']:,} |")
    return "\n".join(lines)


def write_spectra(model: nn.Module, adapter: ModelBehaviour, batches: list[dict], out: Path, selection: SelectionConfig,
                  progress: Callable[..., Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Calibrate every site of ``model`` on ``batches``, plot and summarise; returns the report (without paths)."""
    started = time.perf_counter()
    model.eval()
    sites = discover_sites(model, batches[0], adapter.forward, adapter.include)
    log(f"calibrating {len(sites)} sites on {len(batches)} batches")
    chosen = calibrate_and_select(model, sites, batches, adapter, selection, plots=out,
                                  progress=lambda it: progress(it, len(batches), "calibrating"))
    rows = [c.record for c in chosen]
    examples = examples_in(batches)
    seconds = time.perf_counter() - started
    report = {"examples": examples, "samples_per_site": rows[0]["n_samples"], "noise": selection.noise,
              "threshold": selection.threshold, "n_eff": selection.n_eff, "seconds": seconds, "sites": rows}
    header = (f"# RMT spectrum\n\n{examples} examples, {report['samples_per_site']:.0f} samples per "
              f"site (tokens or pixels), noise={selection.noise}, threshold={selection.threshold}, "
              f"n_eff={selection.n_eff}; {seconds:.0f} s.")
    write_text_atomically(out / "summary.md", summarise(rows, header) + "\n")
    return report
