"""The report folder of a run: report.json, report.md (a person's summary) and plots/ (per-site spectra, written
by the loop, plus the metric-vs-reduction trade-off of the steps and the baselines)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from rmtkd.atomic import save_figure_atomically, write_text_atomically
from rmtkd.records import Action, Outcome, described

TRADEOFF_PLOT = "plots/tradeoff.png"


def _reduction(params: int, original: dict[str, Any]) -> float:
    return 1 - params / original["parameters"]


def metric_name(report: dict[str, Any]) -> str:
    return report["metric"]["name"]


def metric_text(report: dict[str, Any], value: float) -> str:
    """The metric as a person reads it: accuracy in percent, perplexity as it is."""
    return f"{100 * value:.2f}" if report["metric"]["percent"] else f"{value:.2f}"


def metric_axis(report: dict[str, Any]) -> tuple[Callable[[float], float], str]:
    """(how to plot a metric value, the axis label)."""
    if report["metric"]["percent"]:
        return (lambda value: 100 * value), f"{metric_name(report)} (%)"
    return (lambda value: value), metric_name(report)


def measured_text(report: dict[str, Any], row: dict[str, Any], key: str) -> str:
    """A row's metric under ``key`` with its 95% interval where the row has one ("86.24 (84.06–88.42)")."""
    interval = row.get(f"{key}_interval")
    shown = metric_text(report, row[key])
    return shown if interval is None else (f"{shown} ({metric_text(report, interval[0])}–"
                                           f"{metric_text(report, interval[1])})")


def changes_text(report: dict[str, Any]) -> list[str]:
    """The compressed-vs-original change of the metric on each measured set, with its paired 95% interval."""
    scale, unit = (100, " points") if report["metric"]["percent"] else (1, "")
    lines = []
    for where, change in (report.get("changes") or {}).items():
        measured_on = "validation slice" if where == "validation" else f"{where} data"
        noise = "" if change["low"] > 0 or change["high"] < 0 else "; it holds 0: not told apart from noise"
        lines.append(f"- {metric_name(report)} change on the {measured_on}: {scale * change['value']:+.2f}{unit} "
                     f"(95% paired interval {scale * change['low']:+.2f} to {scale * change['high']:+.2f}{noise})")
    return lines


def model_table(report: dict[str, Any]) -> str:
    """Markdown rows: original, RMT-KD and (if run) the baselines: parameters, reduction, FLOPs, metric, latency."""
    original, final = report["original"], report["final"]
    latency = report.get("latency_ms") or {}
    rows = [("original", original, latency.get("original")), ("RMT-KD", final, latency.get("compressed"))]
    rows += [(b["method"], b, None) for b in report.get("baselines", [])]
    shape = ""
    if latency:
        shape = f" (batch {latency['batch']}" + (f", seq {latency['seq_len']}" if latency.get("seq_len") else "")
        shape += f", {latency['device']})"
    lines = [f"| model | parameters | reduction | forward FLOPs | {metric_name(report)} | latency ms{shape} |",
             "|---|---|---|---|---|---|"]
    for name, row, ms in rows:
        flops = f"{row['flops']:.3g}" if "flops" in row else "—"
        lines.append(f"| {name} | {row['parameters']:,} | {100 * _reduction(row['parameters'], original):.1f}% | "
                     f"{flops} | {measured_text(report, row, metric_name(report))} | "
                     f"{'—' if ms is None else f'{ms:.2f}'} |")
    recovery = report.get("recovery")
    if recovery:
        name = metric_name(report)
        lines.append(f"\nrecovery pass against the original ({recovery['steps']} batches, {described(recovery)}): "
                     f"{name} {metric_text(report, recovery[f'{name}_before'])} → "
                     f"{metric_text(report, recovery[f'{name}_after'])}")
    changes = changes_text(report)
    if changes:
        lines += ["", *changes]
    if latency:
        speedup = latency["original"] / latency["compressed"]
        spread = "".join(f", {name} quartiles {q[0]:.2f}–{q[1]:.2f} ms over {latency[f'{name}_calls']} calls"
                         for name in ("original", "compressed") if (q := latency.get(f"{name}_quartiles")))
        how = f" ({latency['method']}{spread})" if latency.get("method") else ""
        lines.append(f"\nlatency speed-up: {speedup:.2f}x{how}")
    return "\n".join(lines)


def site_table(report: dict[str, Any]) -> str:
    """Markdown rows, one per site the loop looked at: d, selected k, σ², threshold, what was done."""
    lines = ["| step | site | d | k | σ² | threshold | parameters | action |", "|---|---|---|---|---|---|---|---|"]
    for step in report["steps"]:
        for site in step["sites"]:
            action = described(site) if site["action"] != Action.PROJECTED else f"projected ({described(step)})"
            lines.append(f"| {step['step']} | {site['site']} | {site['d']} | {site['k']} | {site['sigma2']:.4g} | "
                         f"{site['edge']:.4g} | {site['parameters_before']:,} → {site['parameters_after']:,} | "
                         f"{action} |")
    return "\n".join(lines)


def rank_plan_section(report: dict[str, Any]) -> list[str]:
    """The rank budget's plan, as report.md lines (none for the threshold rule's ranks)."""
    plan = report.get("rank_plan")
    if not plan:
        return []
    bar = "rank 1 everywhere" if plan["strength"] is None else f"λ / λ₊ ≥ {plan['strength']:.3g}"
    flops, order = "", "by their height over their own noise edge"
    if "flop_target" in plan:
        flops = (f" and the cap of {plan['flop_target']:,} forward FLOPs on a calibration batch (planned: "
                 f"{plan['flops']:,} of {plan['flops_before']:,})")
        if plan["flop_price"]:
            order += f" less {plan['flop_price']:.3g} × the fraction of the model's FLOPs each costs"
    lines = ["## Rank budget", "",
             f"Ranks planned over {len(plan['ranks'])} sites to meet the target of {plan['target']:,} parameters "
             f"(planned: {plan['parameters']:,}){flops}: the strongest directions of all sites {order}, down "
             f"to {bar}; the threshold rule alone would keep the `rule k` column.", "",
             "| site | d | k | variance kept | rule k | rule variance kept | parameters |"
             + (" FLOPs |" if flops else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if flops else "")]
    lines += [f"| {site['site']} | {site['d']} | {site['k']} | {100 * site['variance_kept']:.1f}% | "
              f"{site['rule_k']} | {100 * site['rule_variance_kept']:.1f}% | "
              f"{site['parameters_before']:,} → {site['parameters_after']:,} |"
              + (f" {site['flops_before']:.3g} → {site['flops_after']:.3g} |" if flops else "")
              for site in plan["sites"]]
    return lines + [""]


def summary_table(report: dict[str, Any]) -> str:
    """What the terminal shows at the end of a run: the model table, then the per-site table."""
    return model_table(report) + "\n\n" + site_table(report)


def steps_metric_key(report: dict[str, Any]) -> str:
    """The original's entry that the steps' metrics compare with: the evaluation data's, or the validation
    slice's where the steps were measured on it (the candidates of a choice on the validation slice)."""
    name = metric_name(report)
    return f"validation_{name}" if report.get("selection") else name


def selection_section(report: dict[str, Any]) -> list[str]:
    """The candidates of a choice on the validation slice, as report.md lines (none for a single run)."""
    selection = report.get("selection")
    if not selection:
        return []
    name, scale = metric_name(report), 100 if report["metric"]["percent"] else 1
    lines = ["## Settings chosen on the validation slice", "",
             f"Every candidate was compressed and measured on the validation slice only; chosen: "
             f"`{selection['chosen']}` ({selection['rule']}). The evaluation data was read once, after the choice "
             "(the tables above). The per-step figures and the plot are the chosen candidate's, on the validation "
             "slice.", "",
             f"| candidate | parameters | reduction | validation {name} | change (95% paired interval) |",
             "|---|---|---|---|---|"]
    for row in selection["candidates"]:
        change = row[f"validation_{name}_change"]
        chosen = " (chosen)" if row["name"] == selection["chosen"] else ""
        lines.append(f"| `{row['name']}`{chosen} | {row['parameters']:,} | {100 * row['parameter_reduction']:.1f}% "
                     f"| {measured_text(report, row, f'validation_{name}')} | {scale * change['value']:+.2f} "
                     f"({scale * change['low']:+.2f} to {scale * change['high']:+.2f}) |")
    return lines + [""]


def plot_tradeoff(report: dict[str, Any], path: Path) -> Path:
    """The metric against parameter reduction after every step (kept steps joined, rolled-back ones marked),
    with the baselines at the final size as separate markers."""
    original, name = report["original"], metric_name(report)
    value, label = metric_axis(report)
    start = original[steps_metric_key(report)]
    if report.get("selection"):
        label += " (validation slice)"
    xs, ys = [0.0], [value(start)]
    rolled_x, rolled_y = [], []
    for step in report["steps"]:
        if f"{name}_after" not in step:
            continue
        if step["outcome"] == Outcome.KEPT:
            xs.append(100 * _reduction(step["parameters_after"], original))
            ys.append(value(step[f"{name}_after"]))
        else:  # measured before the rollback: the size it would have had
            after = sum(s["parameters_after"] - s["parameters_before"] for s in step["sites"]
                        if s["action"] == Action.PROJECTED) + step["parameters_before"]
            rolled_x.append(100 * _reduction(after, original))
            rolled_y.append(value(step[f"{name}_after"]))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(xs, ys, marker="o", color="#08519c", label="RMT-KD after each step")
    for i, (x, y) in enumerate(zip(xs, ys)):
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8, color="#08519c")
    if rolled_x:
        ax.plot(rolled_x, rolled_y, linestyle="none", marker="x", markersize=9, color="#d62728",
                label="step rolled back")
    for marker, baseline in zip("sDv^", report.get("baselines", [])):
        ax.plot([100 * _reduction(baseline["parameters"], original)], [value(baseline[name])],
                linestyle="none", marker=marker, markersize=8, label=baseline["method"])
    ax.axhline(value(start), color="grey", linestyle=":", linewidth=1, label=f"original {name}")
    ax.set_xlabel("parameter reduction (%)")
    ax.set_ylabel(label)
    ax.set_title(f"{name.capitalize()} vs. compression (step number next to each point)", fontsize=11)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.grid(alpha=0.3)
    return save_figure_atomically(fig, path)


def markdown_report(report: dict[str, Any], title: str) -> str:
    settings = "\n".join(f"- `{key}`: {value}" for key, value in sorted(report.get("settings", {}).items()))
    plots = sorted({site["plot"] for step in report["steps"] for site in step["sites"] if "plot" in site})
    name = metric_name(report)
    return "\n".join([
        f"# {title}", "",
        f"Parameters {report['original']['parameters']:,} → {report['final']['parameters']:,} "
        f"({100 * report['parameter_reduction']:.1f}% fewer), {name} {metric_text(report, report['original'][name])} "
        f"→ {metric_text(report, report['final'][name])}; stopped: {report['stopped']}.", "",
        model_table(report), "", f"![{name} vs. parameter reduction]({TRADEOFF_PLOT})", "",
        *selection_section(report), "## Sites", "", site_table(report), "", *rank_plan_section(report),
        "## Spectrum plots", "", *[f"- [{p}]({p})" for p in plots], "",
        "## Settings", "", settings, "",
    ])


def write_report(report: dict[str, Any], out: Path, title: str) -> None:
    """report.json, report.md and the trade-off plot into the run's folder (each written atomically)."""
    plot_tradeoff(report, out / TRADEOFF_PLOT)
    write_text_atomically(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomically(out / "report.md", markdown_report(report, title))
