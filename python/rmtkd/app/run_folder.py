"""The output folder of a command: claimed for one run's settings (run.json), resumed by the same settings,
replaced only with --overwrite, and never holding a user's files that the run would touch."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from rmtkd.calibration import PLOTS
from rmtkd.loop import CHECKPOINT
from rmtkd.persistence import write_text_atomically

RUN_FILE = "run.json"  # the arguments of the run that owns an output folder
RUN_ENTRIES = {"teacher", CHECKPOINT, "model", PLOTS, "report.json", "report.md", "summary.md", RUN_FILE}
NOT_IN_FINGERPRINT = {"run", "command", "out", "overwrite", "json", "baselines", "latency_seq_len", "device"}


def claim_output_folder(out: Path, args: argparse.Namespace) -> None:
    """Make ``out`` this run's folder: new, or an earlier run of the same settings (resumed), or, with
    --overwrite, an earlier rmtkd run whose files are removed. Anything a user put there is never touched."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IN_FINGERPRINT}
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file, not a folder")
    if out.is_dir():
        foreign = sorted(e.name for e in out.iterdir() if e.name not in RUN_ENTRIES and not e.name.startswith("."))
        if foreign:
            raise ValueError(f"--out: {out} holds files that are not an rmtkd run ({foreign[0]}); choose a new folder")
        previous = json.loads((out / RUN_FILE).read_text()) if (out / RUN_FILE).is_file() else None
        has_run = any((out / entry).exists() for entry in RUN_ENTRIES - {RUN_FILE})  # a run that produced something
        if has_run and previous != settings:
            if not args.overwrite:
                changed = sorted(k for k in set(settings) | set(previous or {})
                                 if (previous or {}).get(k) != settings.get(k))
                raise ValueError(f"--out: {out} holds a run with other settings ({', '.join(changed[:4])} differ); "
                                 "re-run with its settings to resume, pass --overwrite to replace it, or choose "
                                 "another folder")
            for entry in RUN_ENTRIES:
                target = out / entry
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / RUN_FILE, json.dumps(settings, indent=2) + "\n")
