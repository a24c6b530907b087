"""Static GPU checks, no GPU needed: every kernel configuration the launchers can pick, compiled for A100 (sm_80) and
H100 (sm_90), with its registers, spills, shared memory and instruction mix.

Triton kernels are compiled ahead of time (``triton.compile`` with a ``GPUTarget``), specialised as the JIT would
specialise them for contiguous inputs (16-byte aligned pointers, sizes divisible by 16 where they are, unit strides
as constants), plus a feature dimension of 1000 (no divisibility) for the SYRK. Registers and spills come from
Triton's bundled ``ptxas -v``, instructions from its ``cuobjdump -sass``. The CUDA kernels are read from the built
extension (rmtkd_kernels._C, built for sm_80 and sm_90 where nvcc was found): ``cuobjdump --dump-resource-usage``
and the SASS of each function.

Rules (tests/kernels/test_static_gpu.py asserts them): everything compiles; nothing spills; 16-bit input, and fp32
input in tf32x3 mode, runs on tensor cores (HMMA on sm_80; HMMA or HGMMA/wgmma on sm_90); float64 atomic adds
carry no memory fence. Run ``python benchmarks/static_gpu.py`` to write benchmarks/results/static/.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ARCHS = (80, 90)


@dataclass
class Case:
    """One Triton kernel specialisation: argument types, runtime values of its ints, constexprs, launch options."""

    name: str
    kernel: object
    types: dict
    values: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    tensor_cores: bool  # whether the rules require tensor-core instructions


@dataclass
class Row:
    kernel: str
    arch: int
    ok: bool
    regs: Optional[int] = None
    spill_bytes: Optional[int] = None
    shared_bytes: Optional[int] = None
    tensor_core_instructions: int = 0
    ffma: int = 0
    fp64_atomics: int = 0
    fenced_atomics: int = 0
    membar: int = 0
    tensor_cores_required: bool = False
    error: str = ""
    notes: dict = field(default_factory=dict)


def _triton_tools() -> tuple[Path, Path]:
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return bin_dir / "ptxas", bin_dir / "cuobjdump"


def sass_counts(sass: str) -> dict:
    return {
        "tensor": len(re.findall(r"\b(?:HMMA|HGMMA)\.", sass)),
        "ffma": len(re.findall(r"\bFFMA\b", sass)),
        "membar": len(re.findall(r"\bMEMBAR\.\w+\.(?:GPU|SYS)\b", sass)),  # CTA-scope ones order wgmma
        "fp64_atomics": len(re.findall(r"\b(?:RED|REDG|ATOM|ATOMG)\.E\.ADD\.F64", sass)),
    }


def ptx_fenced_fp64_atomics(ptx: str) -> int:
    """fp64 atomic adds whose memory order is stronger than relaxed (each costs a GPU-wide fence)."""
    return len(re.findall(r"\b(?:atom|red)\.[\w.]*(?:acq_rel|release|acquire|sc)[\w.]*f64", ptx))


# ------------------------------------------------------------------------------------------------ Triton
def triton_cases() -> Iterator[Case]:
    from rmtkd_kernels.triton import cov_accumulate as cov
    from rmtkd_kernels.triton import projected_linear as pl

    n = 65536
    precisions = (("bf16", "tf32", True), ("fp16", "tf32", True), ("fp32", "tf32x3", True), ("fp32", "ieee", False))
    for config, (block_d, block_n, warps, stages) in cov.SYRK_CONFIGS.items():
        for dtype, precision, tensor in precisions:
            if (dtype == "fp32") != (config == "fp32"):
                continue
            layouts = [(f"d{d}", d, d, 1) for d in (1536, 1000)] + [("colmajor", 1536, 1, n)]
            for layout, d, stride_xn, stride_xd in layouts:
                for acc64 in (True, False):
                    yield Case(
                        f"cov_syrk-{config}-{dtype}-{precision}-{layout}-acc{64 if acc64 else 32}",
                        cov._cov_syrk_kernel,
                        {"x_ptr": f"*{dtype}", "mask_ptr": "*i1", "gram_ptr": "*fp64" if acc64 else "*fp32",
                         "pairs_ptr": "*i32", "n": "i32", "d": "i32", "rows_per_split": "i32", "stride_xn": "i32",
                         "stride_xd": "i32"},
                        {"n": n, "d": d, "rows_per_split": 2048, "stride_xn": stride_xn, "stride_xd": stride_xd},
                        {"HAS_MASK": acc64, "INPUT_PRECISION": precision, "BLOCK_D": block_d,
                         "BLOCK_N": block_n}, warps, stages, tensor)
    block_c, block_cn, warps = cov.COLSUM_CONFIG
    for dtype in ("bf16", "fp16", "fp32"):
        yield Case(f"colsum-{dtype}", cov._colsum_kernel,
                   {"x_ptr": f"*{dtype}", "mask_ptr": "*i1", "colsum_ptr": "*fp64", "flag_ptr": "*i32", "n": "i32",
                    "d": "i32", "rows_per_split": "i32", "stride_xn": "i32", "stride_xd": "i32"},
                   {"n": n, "d": 1536, "rows_per_split": 1024, "stride_xn": 1536, "stride_xd": 1},
                   {"HAS_MASK": True, "BLOCK_C": block_c, "BLOCK_N": block_cn}, warps, 3, False)
    for config, (block_m, block_d, block_o, warps, stages) in pl.CONFIGS.items():
        for dtype, precision in (("bf16", "tf32"), ("fp16", "tf32"), ("fp32", "tf32x3"), ("fp32", "ieee")):
            if (dtype == "fp32") != (config == "fp32"):
                continue
            for k_pad in (64, pl.MAX_K):
                for split in (False, True):
                    d_in, d_out = 768, 768
                    yield Case(
                        f"projected_linear-{config}-{dtype}-{precision}-k{k_pad}{'-split' if split else ''}",
                        pl._projected_linear_kernel,
                        {**{name: f"*{dtype}" for name in ("x_ptr", "p_ptr", "w_ptr", "b_ptr", "y_ptr")},
                         "ws_ptr": "*fp32",
                         **{name: "i32" for name in ("M", "D_IN", "K", "D_OUT", "d_per_split", "stride_xm",
                                                     "stride_xd", "stride_pd", "stride_pk", "stride_wo",
                                                     "stride_wk", "stride_ym", "stride_yo")}},
                        {"M": 33, "D_IN": d_in, "K": k_pad - 3, "D_OUT": d_out, "d_per_split": 128,
                         "stride_xm": d_in, "stride_xd": 1, "stride_pd": k_pad - 3, "stride_pk": 1,
                         "stride_wo": k_pad - 3, "stride_wk": 1, "stride_ym": d_out, "stride_yo": 1},
                        {"HAS_BIAS": True, "SPLIT": split, "INPUT_PRECISION": precision, "BLOCK_M": block_m,
                         "BLOCK_D": block_d, "K_PAD": k_pad, "BLOCK_O": block_o}, warps, stages,
                        precision != "ieee")


def _source(case: Case):
    """The kernel specialised as Triton's JIT would for these values: ints equal to 1 become constants, pointers
    and ints divisible by 16 carry the divisibility hint."""
    from triton.compiler import ASTSource

    signature, constants, attrs = {}, dict(case.constexprs), {}
    for index, name in enumerate(case.kernel.arg_names):
        if name in case.constexprs:
            signature[name] = "constexpr"
            continue
        kind, value = case.types[name], case.values.get(name)
        if kind.startswith("*"):
            signature[name] = kind
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif value == 1:
            signature[name], constants[name] = "constexpr", 1
        else:
            signature[name] = kind
            if value is not None and value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=case.kernel, signature=signature, constexprs=constants, attrs=attrs)


def compile_triton(case: Case, arch: int) -> Row:
    import triton
    from triton.backends.compiler import GPUTarget

    row = Row(case.name, arch, ok=False, tensor_cores_required=case.tensor_cores)
    try:
        compiled = triton.compile(_source(case), target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": case.num_warps, "num_stages": case.num_stages})
    except Exception as error:  # noqa: BLE001 - a compile failure is a result
        row.error = f"{type(error).__name__}: {error}"[:300]
        return row
    ptxas, cuobjdump = _triton_tools()
    work = Path(os.environ.get("TRITON_CACHE_DIR", "/tmp")) / "rmtkd-static"
    work.mkdir(parents=True, exist_ok=True)
    ptx, cubin = work / f"{case.name}-{arch}.ptx", work / f"{case.name}-{arch}.cubin"
    ptx.write_text(compiled.asm["ptx"])
    cubin.write_bytes(compiled.asm["cubin"])
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    log = subprocess.run([str(ptxas), "-v", f"--gpu-name={gpu}", str(ptx), "-o", os.devnull],
                         capture_output=True, text=True).stderr
    sass = subprocess.run([str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True).stdout
    regs = re.search(r"Used (\d+) registers", log)
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    counts = sass_counts(sass)
    row.ok = True
    row.regs = int(regs.group(1)) if regs else None
    row.spill_bytes = sum(spills) if spills else None
    row.shared_bytes = compiled.metadata.shared
    row.tensor_core_instructions = counts["tensor"]
    row.ffma, row.membar, row.fp64_atomics = counts["ffma"], counts["membar"], counts["fp64_atomics"]
    row.fenced_atomics = ptx_fenced_fp64_atomics(compiled.asm["ptx"])
    row.notes = {"num_warps": case.num_warps, "num_stages": case.num_stages}
    return row


def _compile_nth(job: tuple[int, int]) -> Row:
    index, arch = job
    return compile_triton(list(triton_cases())[index], arch)


def triton_rows(archs=ARCHS) -> list[Row]:
    """Every case for every architecture, compiled on all cores (the compiles are independent)."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(index, arch) for index in range(len(list(triton_cases()))) for arch in archs]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(_compile_nth, jobs))


# ------------------------------------------------------------------------------------------------ CUDA
def _demangled(name: str) -> str:
    match = re.search(r"(cov_syrk_kernel|colsum_kernel)I(.*?)E(?:E)?vPK", name)
    if not match:
        return name
    types = {"N3c108BFloat16E": "bf16", "N3c104HalfE": "fp16", "f": "fp32", "d": "fp64"}
    args = match.group(2)
    found = re.findall(r"N3c108BFloat16E|N3c104HalfE|[fd]", args)
    return f"{match.group(1)}<{','.join(types[t] for t in found)}>"


def cuda_rows(library: Path) -> list[Row]:
    """Per function and architecture, from the fatbin of the built extension."""
    _, cuobjdump = _triton_tools()
    usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(library)], capture_output=True,
                           text=True).stdout
    sass = subprocess.run([str(cuobjdump), "-sass", str(library)], capture_output=True, text=True).stdout
    rows: dict[tuple[str, int], Row] = {}
    arch = None
    for line in usage.splitlines():
        if m := re.match(r"\s*arch = sm_(\d+)", line):
            arch = int(m.group(1))
        elif m := re.match(r"\s*Function (\S+):", line):
            name = _demangled(m.group(1))
            row = rows.setdefault((name, arch), Row(f"cuda {name}", arch, ok=True,
                                                    tensor_cores_required=name.startswith("cov_syrk")))
        elif m := re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line):
            row.regs, row.shared_bytes = int(m.group(1)), int(m.group(3))
            row.spill_bytes = int(m.group(2)) + int(m.group(4))
    arch = name = None
    for block in re.split(r"\n(?=\s*(?:arch = sm_\d+|Function : ))", sass):
        if m := re.match(r"\s*arch = sm_(\d+)", block):
            arch = int(m.group(1))
            continue
        if m := re.match(r"\s*Function : (\S+)", block):
            key = (_demangled(m.group(1)), arch)
            if key in rows:
                counts = sass_counts(block)
                rows[key].tensor_core_instructions = counts["tensor"]
                rows[key].ffma, rows[key].membar = counts["ffma"], counts["membar"]
                rows[key].fp64_atomics = counts["fp64_atomics"]
    return sorted(rows.values(), key=lambda r: (r.kernel, r.arch))


def built_cuda_library() -> Optional[Path]:
    """The extension's shared library when it was built with the CUDA kernels, else None."""
    from rmtkd_kernels.extension import EXTENSION

    if not (EXTENSION.loaded and EXTENSION.with_cuda):
        return None
    import rmtkd_kernels._C

    return Path(rmtkd_kernels._C.__file__)


# ------------------------------------------------------------------------------------------------ rules
def violations(row: Row) -> list[str]:
    """What is wrong with one row under the rules (empty: nothing)."""
    problems = []
    if not row.ok:
        return [f"does not compile: {row.error}"]
    if row.spill_bytes:
        problems.append(f"spills {row.spill_bytes} bytes")
    if row.tensor_cores_required and not row.tensor_core_instructions:
        problems.append("no tensor-core instructions")
    if row.fenced_atomics or row.membar:
        problems.append(f"fenced atomics ({row.fenced_atomics} in PTX, {row.membar} MEMBAR in SASS)")
    return problems


def markdown(rows: list[Row]) -> str:
    lines = ["| kernel | sm | regs | spill B | smem B | tensor-core instr. | FFMA | fp64 atomics | fenced | rules |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "; ".join(violations(r)) or "ok"
        lines.append(f"| {r.kernel} | {r.arch} | {r.regs} | {r.spill_bytes} | {r.shared_bytes} | "
                     f"{r.tensor_core_instructions} | {r.ffma} | {r.fp64_atomics} | {r.fenced_atomics + r.membar} | "
                     f"{verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "static"))
    args = parser.parse_args(argv)
    rows = triton_rows()
    library = built_cuda_library()
    rows += cuda_rows(library) if library else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import triton

    header = (f"# Static GPU checks\n\nTriton {triton.__version__}; CUDA kernels "
              f"{'from ' + library.name if library else 'not built (no nvcc)'}. Command: "
              "`python benchmarks/static_gpu.py`.\n\n")
    (out / "static.md").write_text(header + markdown(rows))
    (out / "static.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    bad = [(r.kernel, r.arch, violations(r)) for r in rows if violations(r)]
    print(markdown(rows))
    for kernel, arch, problems in bad:
        print(f"RULE BROKEN: {kernel} sm_{arch}: {'; '.join(problems)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
