"""Kernel benchmark: cov_accumulate and projected_linear, every backend here vs. what a user would write.

    python benchmarks/kernel_benchmark.py            # full shapes on the default device (cuda if present)
    python benchmarks/kernel_benchmark.py --quick    # tiny shapes, a few calls: CI's smoke run
    python benchmarks/kernel_benchmark.py --brief    # the shapes the goals are stated at, 0.2 s a candidate
    python benchmarks/kernel_benchmark.py --device cpu --out benchmarks/results

Prints and writes <out>/<device>/kernels.{json,md}: median time per call, achieved FLOP/s and bytes/s, the
fraction of this device's roofline (peak GEMM rate and copy bandwidth measured in the same run), and each
candidate's speed ratio against the baselines measured in the same run (ratio > 1: faster than baseline).
The Triton interpreter is not a benchmark: on CPU only the reference and the C++ backend are timed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_common_arguments, buffer_count, device_slug, machine_info, markdown_table, measure_roofline, median_seconds,
    usable_device, write_results,
)

from rmtkd_kernels import ProjectedLinear, cov_accumulate, projected_linear  # noqa: E402
from rmtkd_kernels.backends import unsupported_reasons  # noqa: E402


def timed_backends(op: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    probe = torch.empty(1, 1, device=device, dtype=dtype)
    names = [b for b in ("reference", "triton", "cuda", "cpu") if not unsupported_reasons(b, op, probe)]
    return [b for b in names if not (b == "triton" and device.type == "cpu")]


def _gemm_fp32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.mm with fp32 output for half inputs (CUDA, torch >= 2.9); plain mm + cast elsewhere."""
    if a.is_cuda and a.dtype != torch.float32:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # a torch without out_dtype for mm
            pass
    return torch.mm(a, b).float()


def cov_cases(device: torch.device, quick: bool, brief: bool = False) -> list[tuple[int, int, torch.dtype]]:
    """(d, n rows, dtype): MiniLM (384, FFN 1536), BERT-base (768, FFN 3072) widths; calibration chunks 1k-64k.
    ``brief``: BERT-base and Llama widths (768 to 4096) at 8k and 64k rows, 16-bit on GPU."""
    if quick:
        return [(96, 512, torch.float32)]
    if brief:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return [(d, n, dtype) for d in (768, 1536, 3072, 4096) for n in (8192, 65536)]
    if device.type == "cuda":
        return ([(d, n, torch.bfloat16) for d in (384, 768, 1536, 3072) for n in (1024, 16384, 65536)]
                + [(d, 16384, torch.float32) for d in (768, 1536)])
    return ([(d, n, torch.float32) for d in (384, 768, 1536) for n in (1024, 8192)]
            + [(768, 65536, torch.float32), (1536, 8192, torch.bfloat16)])


def bench_cov(device: torch.device, quick: bool, roof: dict[str, float], brief: bool = False) -> list[dict[str, object]]:
    rows = []
    min_time = 0.02 if quick else (0.2 if brief else 1.0)
    for d, n, dtype in cov_cases(device, quick, brief):
        sets = buffer_count(n * d * torch.finfo(dtype).bits // 8, device)
        xs = [(torch.randn(n, d, device=device) + 0.1).to(dtype) for _ in range(sets)]
        gram64 = torch.zeros(d, d, dtype=torch.float64, device=device)
        gram32 = torch.zeros(d, d, dtype=torch.float32, device=device)
        colsum = torch.zeros(d, dtype=torch.float64, device=device)
        bad = torch.zeros((), dtype=torch.int64, device=device)
        candidates: dict[str, Callable[[int], object]] = {
            "baseline: acc64 += (x.T @ x).double()": lambda i: gram64.add_((xs[i % sets].T @ xs[i % sets]).double()),
            "baseline: acc32 += mm(x.T, x, fp32 out), colsum += x.sum(0)": lambda i: (
                gram32.add_(_gemm_fp32_out(xs[i % sets].T, xs[i % sets])), colsum.add_(xs[i % sets].sum(0))),
        }
        if dtype == torch.float32:
            candidates["baseline: acc32.addmm_(x.T, x)"] = lambda i: gram32.addmm_(xs[i % sets].T, xs[i % sets])
        for backend in timed_backends("cov_accumulate", device, dtype):
            candidates[f"cov_accumulate[{backend}] -> float64"] = (
                lambda i, b=backend: cov_accumulate(xs[i % sets], gram64, colsum, bad, backend=b))
        candidates["cov_accumulate (auto) -> float64"] = lambda i: cov_accumulate(xs[i % sets], gram64, colsum, bad)
        times = {name: median_seconds(fn, device, min_time) for name, fn in candidates.items()}
        full_flops = 2 * n * d * d  # what a full GEMM does to produce the same Gram matrix
        min_bytes = n * d * xs[0].element_size() + d * (d + 1) // 2 * 8 * 2  # read X, read+write the triangle
        baselines = {k: v for k, v in times.items() if k.startswith("baseline")}
        for name, seconds in times.items():
            row: dict[str, object] = {
                "op": "cov_accumulate", "d": d, "n": n, "dtype": str(dtype).replace("torch.", ""), "candidate": name,
                "ms": seconds * 1e3,
                "effective_TFLOPs": full_flops / seconds / 1e12,
                "useful_TFLOPs": n * d * (d + 1) / seconds / 1e12,
                "GBs": min_bytes / seconds / 1e9,
                "roofline_fraction": max(n * d * (d + 1) / roof["gemm_flops"], min_bytes / roof["copy_bytes_per_s"]) / seconds,
            }
            for base_name, base_seconds in baselines.items():
                row["x_vs_" + base_name.split(": ")[1]] = base_seconds / seconds
            rows.append(row)
    return rows


def projected_cases(device: torch.device, quick: bool,
                    brief: bool = False) -> list[tuple[int, int, int, int, torch.dtype]]:
    """(rows, d_in, k, d_out, dtype): MiniLM / BERT-base widths, k from 32 to 512, rows from 1 to 16k.
    ``brief``: BERT-base at k = 128, from 1 to 16k rows, 16-bit on GPU."""
    if quick:
        return [(rows, 96, 24, 96, torch.float32) for rows in (1, 64)]
    if brief:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return [(rows, 768, 128, 768, dtype) for rows in (1, 16, 64, 4096, 16384)]
    ks = {384: (32, 128, 256), 768: (32, 128, 512)}
    if device.type == "cuda":
        return ([(rows, d, k, d, torch.bfloat16) for d in ks for k in ks[d] for rows in (1, 16, 64, 256, 1024, 16384)]
                + [(rows, 768, 128, 768, torch.float32) for rows in (1, 64, 1024, 16384)])
    return [(rows, d, k, d, torch.float32) for d in ks for k in ks[d] for rows in (1, 64, 1024, 16384)]


def projected_layer(basis: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> ProjectedLinear:
    """The drop-in layer holding these parameters: what a compressed model calls (its own input checks and the
    automatic backend), so the table shows its per-call overhead next to the bare op's."""
    layer = ProjectedLinear(basis.shape[0], weight.shape[0], basis.shape[1], device=basis.device, dtype=basis.dtype)
    with torch.no_grad():
        for parameter, value in ((layer.basis, basis), (layer.weight, weight), (layer.bias, bias)):
            parameter.copy_(value)
    return layer


def bench_projected(device: torch.device, quick: bool, roof: dict[str, float],
                    brief: bool = False) -> list[dict[str, object]]:
    out = []
    min_time = 0.02 if quick else (0.2 if brief else 0.5)
    for m, d_in, k, d_out, dtype in projected_cases(device, quick, brief):
        element = torch.finfo(dtype).bits // 8
        min_bytes = element * (m * d_in + d_in * k + d_out * k + d_out + m * d_out)
        sets = buffer_count(min_bytes, device)
        data = [tuple(t.to(dtype) for t in (torch.randn(m, d_in, device=device),
                                           torch.randn(d_in, k, device=device) / d_in**0.5,
                                           torch.randn(d_out, k, device=device) / k**0.5,
                                           torch.randn(d_out, device=device))) for _ in range(sets)]
        candidates: dict[str, Callable[[int], object]] = {
            "baseline: two nn.Linear": lambda i: F.linear(F.linear(data[i % sets][0], data[i % sets][1].T),
                                                         data[i % sets][2], data[i % sets][3]),
        }
        for backend in timed_backends("projected_linear", device, dtype):
            candidates[f"projected_linear[{backend}]"] = lambda i, b=backend: projected_linear(*data[i % sets], backend=b)
        layers = [projected_layer(*tensors[1:]) for tensors in data]
        candidates["ProjectedLinear layer (auto)"] = lambda i: layers[i % sets](data[i % sets][0])
        with torch.inference_mode():
            times = {name: median_seconds(fn, device, min_time) for name, fn in candidates.items()}
        flops = 2 * m * k * (d_in + d_out)
        base = times["baseline: two nn.Linear"]
        for name, seconds in times.items():
            out.append({
                "op": "projected_linear", "rows": m, "d_in": d_in, "k": k, "d_out": d_out,
                "dtype": str(dtype).replace("torch.", ""), "candidate": name, "ms": seconds * 1e3,
                "TFLOPs": flops / seconds / 1e12, "GBs": min_bytes / seconds / 1e9,
                "roofline_fraction": max(flops / roof["gemm_flops"], min_bytes / roof["copy_bytes_per_s"]) / seconds,
                "x_vs_two_linears": base / seconds,
            })
    return out


# The GPU goals, checked against the rows of a run: (what, op, candidate, baseline column, row filter, bound).
GOALS = [
    ("cov_accumulate 16-bit -> float64 >= 1.5x mm(x.T, x, fp32 out) + column sums, d >= 1536", "cov_accumulate",
     "cov_accumulate (auto) -> float64", "x_vs_acc32 += mm(x.T, x, fp32 out), colsum += x.sum(0)",
     lambda r: r["d"] >= 1536 and r["dtype"] in ("bfloat16", "float16"), 1.5),
    ("projected_linear (auto) >= 1.2x two linears at <= 64 rows", "projected_linear",
     "ProjectedLinear layer (auto)", "x_vs_two_linears", lambda r: r["rows"] <= 64, 1.2),
    ("projected_linear (auto) >= 0.98x two linears at >= 4096 rows", "projected_linear",
     "ProjectedLinear layer (auto)", "x_vs_two_linears", lambda r: r["rows"] >= 4096, 0.98),
]


def goal_rows(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Each goal's worst measured ratio, where this run measured it (GPU goals: checked on CUDA runs only)."""
    out = []
    for what, op, candidate, column, keep, bound in GOALS:
        ratios = [float(r[column]) for r in rows if r["op"] == op and r["candidate"] == candidate and keep(r)]
        worst = min(ratios) if ratios else None
        out.append({"goal": what, "cases": len(ratios), "worst_ratio": "not measured" if worst is None else worst,
                    "met": "—" if worst is None else ("yes" if worst >= bound else "no")})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--brief", action="store_true", help="the goals' shapes only, 0.2 s per candidate")
    args = parser.parse_args(argv)
    device = usable_device(args, "kernels")
    if device is None:
        return 0
    torch.manual_seed(0)
    roof_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    roof = measure_roofline(device, roof_dtype, args.quick)
    print(f"roofline ({device}): GEMM {roof['gemm_flops'] / 1e12:.2f} TFLOP/s {roof_dtype}, "
          f"copy {roof['copy_bytes_per_s'] / 1e9:.1f} GB/s")
    cov = bench_cov(device, args.quick, roof, args.brief)
    proj = bench_projected(device, args.quick, roof, args.brief)
    goals = goal_rows(cov + proj) if device.type == "cuda" else []
    cov_cols = ["d", "n", "dtype", "candidate", "ms", "effective_TFLOPs", "GBs", "roofline_fraction",
                "x_vs_acc64 += (x.T @ x).double()", "x_vs_acc32 += mm(x.T, x, fp32 out), colsum += x.sum(0)",
                "x_vs_acc32.addmm_(x.T, x)"]
    proj_cols = ["rows", "d_in", "k", "d_out", "dtype", "candidate", "ms", "TFLOPs", "GBs", "roofline_fraction",
                 "x_vs_two_linears"]
    info = machine_info(device)
    markdown = "\n\n".join([
        f"# Kernel benchmark ({device_slug(device)}{', quick' if args.quick else ''})",
        "Command: `python benchmarks/kernel_benchmark.py" + (" --quick" if args.quick else "")
        + (" --brief" if args.brief else "") + f" --device {device.type}`",
        f"Machine: `{info}`",
        f"Roofline measured in this run: GEMM {roof['gemm_flops'] / 1e12:.3g} TFLOP/s ({roof_dtype}), "
        f"copy {roof['copy_bytes_per_s'] / 1e9:.3g} GB/s. effective_TFLOPs counts 2·n·d² (a full GEMM's work "
        "for the same Gram matrix); roofline_fraction = max(compute floor, memory floor) / time, with the SYRK's "
        "n·d·(d+1) FLOPs.",
        *(["## Goals", markdown_table(goals, ["goal", "cases", "worst_ratio", "met"])] if goals else []),
        "## cov_accumulate", markdown_table(cov, cov_cols),
        "## projected_linear", markdown_table(proj, proj_cols),
    ])
    print(markdown)
    out_dir = args.out / (device_slug(device) + ("-quick" if args.quick else ""))
    write_results(out_dir, "kernels", {"machine": info, "roofline": roof, "goals": goals, "cov_accumulate": cov,
                                       "projected_linear": proj}, markdown)
    print(f"\nwrote {out_dir}/kernels.json and kernels.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
