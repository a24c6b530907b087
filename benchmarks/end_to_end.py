"""End-to-end benchmark: an original model folder against its compressed one (``rmtkd compress``'s teacher/ and
model/), as a user would run them.

    python benchmarks/end_to_end.py --run runs/bbc-news-minilm           # OUT/teacher vs OUT/model
    python benchmarks/end_to_end.py --models ORIGINAL COMPRESSED --device cuda
    python benchmarks/end_to_end.py --quick --run RUN                     # CI's smoke run

For every sequence length (text) it measures batch-1 latency and the throughput of a large batch, in eager
mode and under ``torch.compile``, and for the compressed model both with the fused projected_linear kernels
(the automatic backend) and with the plain two-matmul path (RMTKD_BACKEND=projected_linear=reference), so the
kernels' share of the speed-up is visible. Each configuration times the original and the compressed model as a
pair, in alternating blocks of calls (median per call, synchronised), and the speed-up divides the two: on a
small shared machine a slow stretch then falls on both models instead of on one. Energy per inference comes
from benchmarks/energy.py (NVML on GPU, RAPL on CPU, or a line saying why there is none), with the target
checks of the README. Writes <out>/<device>/end_to_end[-LABEL].{json,md,png}.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

# Inductor compiles in worker processes that linger after compiling; on a small CPU they would compete with
# the timed calls. One in-process compile thread keeps the machine quiet while it is timed.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_common_arguments, call_seconds, device_slug, machine_info, markdown_table, paired_medians,
    usable_device, write_results,
)
from energy import measure, measure_idle, open_meter  # noqa: E402

from rmtkd.adapters import LoadedModel, load_model  # noqa: E402
from rmtkd.atomic import save_figure_atomically  # noqa: E402
from rmtkd.metrics import count_parameters  # noqa: E402
from rmtkd_kernels.backends import ENV_VAR  # noqa: E402


@contextlib.contextmanager
def backend_setting(value: str | None) -> Iterator[None]:
    """RMTKD_BACKEND=value for the block (None: the automatic choice)."""
    old = os.environ.pop(ENV_VAR, None)
    if value is not None:
        os.environ[ENV_VAR] = value
    try:
        yield
    finally:
        os.environ.pop(ENV_VAR, None)
        if old is not None:
            os.environ[ENV_VAR] = old


def is_text(loaded: LoadedModel) -> bool:
    """Whether the model is a Hugging Face text model (takes token ids) rather than an image model."""
    return hasattr(loaded.model, "config")


def inputs(loaded: LoadedModel, batch: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random token ids (no padding) or random images of the model's input shape."""
    generator = torch.Generator().manual_seed(batch * 1000 + seq_len)
    if is_text(loaded):
        vocab = loaded.model.config.vocab_size
        ids = torch.randint(1000, vocab, (batch, seq_len), generator=generator)
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, device=device)}
    channels = loaded.meta["architecture"].get("in_channels", 1) if loaded.meta else 1
    return {"images": torch.randn(batch, channels, 28, 28, generator=generator).to(device)}


def forward_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor], text: bool) -> Callable[[], object]:
    if text:
        return lambda: model(**batch).logits
    return lambda: model(batch["images"])


# (path, RMTKD_BACKEND setting): the automatic backend, and the plain two matmuls for the compressed model.
PATHS: tuple[tuple[str, str | None], ...] = (("fused", None), ("two-matmul", "projected_linear=reference"))


def bench_pairs(original: LoadedModel, compressed: LoadedModel, args: argparse.Namespace, device: torch.device,
                meter: Any, energy_note: str) -> list[dict[str, Any]]:
    """Every (mode, path, sequence length, batch): the original and the compressed model timed as a pair.

    The compressed model runs on each path (fused kernels / two matmuls) paired with its own measurement of the
    original, whose row is reported once (from the fused pairing); ``speedup`` divides the paired times.
    """
    models = {"original": original.model.to(device).eval(), "compressed": compressed.model.to(device).eval()}
    parameters = {name: count_parameters(model) for name, model in models.items()}
    rows: list[dict[str, Any]] = []
    seq_lens = args.seq_lens if is_text(original) else [0]
    for mode in args.modes:
        for path, setting in PATHS:
            if mode == "compile":
                torch._dynamo.reset()  # the backend choice is traced into the graph: no reuse across paths
            runners = {name: torch.compile(model, dynamic=False) if mode == "compile" else model
                       for name, model in models.items()}
            for seq_len in seq_lens:
                for batch in (1, args.batch):
                    if mode == "compile" and batch != 1 and not args.compile_throughput:
                        continue
                    data = inputs(original, batch, seq_len, device)
                    runs = {name: forward_fn(runner, data, is_text(original)) for name, runner in runners.items()}
                    with backend_setting(setting), torch.inference_mode():
                        first_call_s = {name: call_seconds(run, device) for name, run in runs.items()}
                        seconds = paired_medians(runs, device, args.min_time)
                        measured = ("original", "compressed") if path == "fused" else ("compressed",)
                        energy = {name: measure(meter, runs[name], device, args.energy_window, items_per_call=batch)
                                  if meter else {"available": False, "reason": energy_note} for name in measured}
                    for name in measured:
                        ms = seconds[name] * 1e3
                        rows.append({"model": name, "parameters": parameters[name], "mode": mode, "path": path,
                                     "seq_len": seq_len or None, "batch": batch, "ms": ms,
                                     "items_per_s": batch / ms * 1e3, "paired_original_ms": seconds["original"] * 1e3,
                                     "speedup": seconds["original"] / seconds[name],
                                     "first_call_s": first_call_s[name], "energy": energy[name]})
                    print(f"{mode:>7} {path:>10} seq {seq_len:>4} batch {batch:>3}: original "
                          f"{seconds['original'] * 1e3:8.2f} ms, compressed {seconds['compressed'] * 1e3:8.2f} ms "
                          f"({seconds['original'] / seconds['compressed']:.2f}x)", flush=True)
    add_energy_ratios(rows)
    return rows


def add_energy_ratios(rows: list[dict[str, Any]]) -> None:
    """energy_ratio of every compressed row against the original's row of the same mode, seq_len and batch."""
    base = {(r["mode"], r["seq_len"], r["batch"]): r for r in rows if r["model"] == "original"}
    for row in rows:
        ref = base.get((row["mode"], row["seq_len"], row["batch"]))
        if ref is not None and row["energy"]["available"] and ref["energy"]["available"]:
            row["energy_ratio"] = row["energy"]["joules_per_item"] / ref["energy"]["joules_per_item"]


# The project's targets (README "Benchmarks"): at >= 50% fewer parameters, batch-1 latency >= 1.8x faster on
# CPU; on GPU, energy per inference <= 0.6x the original's. Checked on the automatic (fused) path, batch 1.
MIN_REDUCTION, CPU_SPEEDUP, GPU_ENERGY_RATIO = 0.5, 1.8, 0.6


def target_checks(rows: list[dict[str, Any]], device_type: str) -> dict[str, Any]:
    """The compressed model's parameter reduction and, per mode and sequence length at batch 1, the measured
    ratio against the target of this device type (speed-up on CPU, energy ratio on GPU; None: not measured)."""
    params = {r["model"]: r["parameters"] for r in rows}
    reduction = 1 - params["compressed"] / params["original"]
    gpu = device_type == "cuda"
    metric, target = ("energy_ratio", GPU_ENERGY_RATIO) if gpu else ("speedup", CPU_SPEEDUP)
    checks = []
    for row in rows:
        if (row["model"], row["path"], row["batch"]) != ("compressed", "fused", 1):
            continue
        value = row.get(metric)
        met = value is not None and reduction >= MIN_REDUCTION and (value <= target if gpu else value >= target)
        checks.append({"mode": row["mode"], "seq_len": row["seq_len"], metric: value, "met": met})
    wanted = f"energy per inference <= {target}x" if gpu else f"batch-1 speed-up >= {target}x"
    return {"parameter_reduction": reduction, "target": f"at >= {MIN_REDUCTION:.0%} fewer parameters, {wanted}",
            "metric": metric, "checks": checks}


def targets_markdown(targets: dict[str, Any]) -> str:
    metric = targets["metric"]
    lines = [f"Target: {targets['target']}. Parameter reduction: {targets['parameter_reduction']:.1%}.", "",
             "| mode | seq_len | " + metric + " | met |", "|---|---|---|---|"]
    for check in targets["checks"]:
        value = check[metric]
        lines.append(f"| {check['mode']} | {check['seq_len']} | "
                     f"{'not measured' if value is None else f'{value:.2f}'} | {'yes' if check['met'] else 'no'} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for (mode, p, batch) in sorted({(r["mode"], r["path"], r["batch"]) for r in rows if r["model"] != "original"}):
        points = sorted((r["seq_len"] or 0, r["speedup"]) for r in rows
                        if (r["model"], r["mode"], r["path"], r["batch"]) == ("compressed", mode, p, batch))
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=f"{mode}, {p}, batch {batch}")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("speed-up of the compressed model (×)")
    ax.set_title("Compressed vs. original, same run", fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure_atomically(fig, path)


def resolve_models(args: argparse.Namespace) -> tuple[Path, Path]:
    """(original, compressed): --models, or a run's teacher/ and model/. A run with no teacher/ (--no-fine-tune,
    --task lm: the model given is the teacher) has its original in the --model folder its run.json records."""
    if args.models:
        return Path(args.models[0]), Path(args.models[1])
    run = Path(args.run)
    original = run / "teacher"
    settings_file = run / "run.json"
    if not original.exists() and settings_file.is_file():
        settings = json.loads(settings_file.read_text())
        if settings.get("model"):
            original = Path(settings["model"])
    return original, run / "model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", default="runs/bbc-news-minilm", help="an `rmtkd compress` output folder")
    which.add_argument("--models", nargs=2, metavar=("ORIGINAL", "COMPRESSED"), help="two model folders")
    add_common_arguments(parser)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--batch", type=int, default=None, help="the large batch (default 64 on GPU, 16 on CPU)")
    parser.add_argument("--modes", nargs="+", choices=("eager", "compile"), default=["eager", "compile"])
    parser.add_argument("--compile-throughput", action="store_true", help="also compile the large batch")
    parser.add_argument("--min-time", type=float, default=2.0,
                        help="seconds of timed calls per model and configuration (in alternating blocks)")
    parser.add_argument("--energy-window", type=float, default=1.0, help="seconds per energy window (>= 1)")
    parser.add_argument("--label", help="results go to end_to_end-LABEL.* (default: end_to_end.*)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    device = usable_device(args, "end_to_end")
    if device is None:
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.seq_lens, args.min_time, args.energy_window = [16], 0.05, 0.2
    args.batch = args.batch or (64 if device.type == "cuda" else 16)
    original_path, compressed_path = resolve_models(args)
    try:
        original, compressed = load_model(original_path), load_model(compressed_path)
    except ValueError as error:
        print(f"end_to_end: {error} (run `rmtkd compress` first, or pass --models ORIGINAL COMPRESSED)",
              file=sys.stderr)
        return 2
    if not (compressed.meta and compressed.meta.get("rewrites")):
        print(f"end_to_end: {compressed_path} is not a compressed model (no rmtkd rewrites in it)", file=sys.stderr)
        return 2
    meter, energy_note = open_meter(device)
    idle = measure_idle(meter, device, 0.5 if args.quick else 3.0) if meter else None
    print(f"energy: {energy_note}" + (f"; idle {idle:.1f} W" if idle is not None else " (no energy numbers)"))
    rows = bench_pairs(original, compressed, args, device, meter, energy_note)
    targets = target_checks(rows, device.type)
    slug = device_slug(device) + ("-quick" if args.quick else "")
    out_dir = args.out / slug
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "end_to_end" + (f"-{args.label}" if args.label else "")
    plot(rows, out_dir / f"{name}.png")
    flat = [{**{k: v for k, v in r.items() if k != "energy"},
             "mJ_per_item": r["energy"]["joules_per_item"] * 1e3 if r["energy"]["available"] else "n/a",
             "mJ_per_item_above_idle": (r["energy"]["joules_per_item_above_idle"] * 1e3
                                        if r["energy"]["available"] else "n/a")} for r in rows]
    info = machine_info(device)
    command = "python benchmarks/end_to_end.py " + " ".join(argv if argv is not None else sys.argv[1:])
    markdown = "\n\n".join([
        f"# End-to-end benchmark ({slug})", f"Command: `{command.strip()}`",
        f"Original: `{original_path}`; compressed: `{compressed_path}`. Machine: `{info}`",
        f"Energy: {energy_note}" + (f"; idle {idle:.1f} W measured in this run." if idle is not None else "."),
        targets_markdown(targets),
        markdown_table(flat, ["model", "parameters", "mode", "path", "seq_len", "batch", "ms", "items_per_s",
                              "paired_original_ms", "speedup", "mJ_per_item", "mJ_per_item_above_idle", "energy_ratio", "first_call_s"]),
        f"![speed-up]({name}.png)",
    ])
    write_results(out_dir, name, {"machine": info, "original": str(original_path),
                                          "compressed": str(compressed_path), "energy": energy_note,
                                          "idle_watts": idle, "targets": targets, "rows": rows}, markdown)
    print(markdown)
    print(f"\nwrote {out_dir}/{name}.json, {name}.md and {name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
