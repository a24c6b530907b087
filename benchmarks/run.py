"""The whole benchmark suite: kernels, then (if model folders are given or the default run exists) end to end.

    python benchmarks/run.py                     # full suite on the default device (what `rmtkd bench` runs)
    python benchmarks/run.py --quick             # tiny shapes: a few seconds (+ end to end if a run exists)
    python benchmarks/run.py --models runs/x/teacher runs/x/model --device cpu

Results go to benchmarks/results/<device>/ (kernels.*, end_to_end.*); see kernel_benchmark.py and end_to_end.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import end_to_end  # noqa: E402
import kernel_benchmark  # noqa: E402

DEFAULT_RUN = Path("runs/bbc-news-minilm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--models", nargs=2, metavar=("ORIGINAL", "COMPRESSED"),
                        help=f"model folders for the end-to-end part (default: {DEFAULT_RUN}/teacher and /model)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    common = (["--quick"] if args.quick else []) + (["--device", args.device] if args.device else []) \
        + (["--out", args.out] if args.out else [])
    status = kernel_benchmark.main(common)
    if args.models:
        status = status or end_to_end.main(common + ["--models", *args.models])
    elif (DEFAULT_RUN / "model").is_dir():
        status = status or end_to_end.main(common + ["--run", str(DEFAULT_RUN)])
    else:
        print(f"end to end: skipped (no --models and no {DEFAULT_RUN}/model; run `rmtkd compress` first)")
    return status


if __name__ == "__main__":
    sys.exit(main())
