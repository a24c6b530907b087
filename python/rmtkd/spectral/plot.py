"""Spectrum plot: eigenvalue histogram, fitted MP density, the threshold, and the kept spikes."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from rmtkd.atomic import save_figure_atomically
from rmtkd.spectral.noise import nonzero_eigenvalues
from rmtkd.spectral.selection import SubspaceSelection

# Past this multiple of the MP edge, spikes would squash the bulk on a linear axis: use log-x instead.
LOG_X_BEYOND_EDGE = 6.0
BULK_BINS = 30  # histogram bins across the MP bulk, on either axis
LOG_X_DECADES = 5.0  # log axis: show at most this many decades below the MP edge; smaller values go to bin 1
CURVE_HEADROOM = 2.5  # a narrow MP peak may rise at most this far above the histogram before it is clipped


def plot_spectrum(selection: SubspaceSelection, path: str | Path, title: Optional[str] = None) -> Path:
    """Write a PNG of the selection's spectrum to ``path`` (atomically) and return the path. matplotlib is
    imported here, so that compressing without plots does not need it."""
    from matplotlib.figure import Figure

    values = nonzero_eigenvalues(selection.eigenvalues, selection.gamma)
    values = values[values > 0]
    law = selection.mp_law()
    log_x = values.max() > LOG_X_BEYOND_EDGE * law.upper_edge
    fig = Figure(figsize=(9, 4.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    hidden = 0
    if log_x:
        low = max(math.log10(values.min()), math.log10(law.upper_edge) - LOG_X_DECADES)
        hidden = int(np.sum(values < 10**low))
        values = np.maximum(values, 10**low)
        step = (math.log10(law.upper_edge) - low) / BULK_BINS
        edges = 10 ** np.arange(low, math.log10(values.max()) + step, step)
        per_unit = np.diff(np.log10(edges))
        grid = np.logspace(max(low, math.log10(max(law.lower_edge, 1e-300))), math.log10(law.upper_edge), 600)
        curve = law.pdf(grid) / law.bulk_mass * grid * math.log(10)  # density per decade
        ax.set_xscale("log")
        ax.set_ylabel("density per decade")
    else:
        edges = np.arange(0.0, values.max() * 1.02 + law.upper_edge / BULK_BINS, law.upper_edge / BULK_BINS)
        per_unit = np.diff(edges)
        grid = np.linspace(max(law.lower_edge, 1e-12), law.upper_edge, 600)
        curve = law.pdf(grid) / law.bulk_mass
        ax.set_ylabel("density")
    counts, _ = np.histogram(values, bins=edges)
    heights = counts / (values.size * per_unit)
    note = f", {hidden} below {edges[0]:.1e} in the first bin" if hidden else ""
    ax.bar(edges[:-1], heights, width=np.diff(edges), align="edge",
           color="#9ecae1", edgecolor="#6baed6", linewidth=0.4, label=f"eigenvalues ({values.size}{note})")
    ax.plot(grid, curve, color="#08519c", linewidth=2,
            label=f"MP fit: σ² = {selection.sigma2:.4g} ({selection.noise_rule}), γ = {selection.gamma:.3g}")
    ax.axvline(selection.edge, color="#d62728", linestyle="--", linewidth=1.5,
               label=f"threshold {selection.edge:.4g} ({selection.threshold_rule})")
    kept = selection.kept_eigenvalues
    if kept.size:
        ax.plot(kept, np.zeros_like(kept), linestyle="none", marker="^", markersize=9 if kept.size <= 30 else 5,
                color="#d62728",
                clip_on=False, label=f"kept: k = {selection.k} ({100 * selection.variance_kept:.1f}% of variance)")
    ax.set_xlabel("eigenvalue λ of the activation covariance" + (" (log scale)" if log_x else ""))
    ax.set_ylim(0, 1.05 * min(max(heights.max(), curve.max()), CURVE_HEADROOM * heights.max()))
    ax.legend(loc="upper right", fontsize=9, framealpha=0.9)
    heading = title or "Activation spectrum"
    ax.set_title(f"{heading}: k = {selection.k} of {selection.d} directions kept", fontsize=11)
    return save_figure_atomically(fig, path)
