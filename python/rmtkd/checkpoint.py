"""A run's checkpoint: the model after the last completed step, the rewrites that shape it, and the loop's state.

The checkpoint is a model folder (``rmtkd.persistence``) at ``<out>/checkpoint`` whose rmtkd.json also holds the
loop's state: the run format, the settings' fingerprint, the next step, the rewrites and step records so far and
the original model's measurements. One fingerprint policy: the hash of every setting that decides the result; a
run resumes only with the same settings, the same number of processes and the same run format.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from torch import nn

from rmtkd.distributed import Workers
from rmtkd.persistence import load_compressed, read_meta, save_compressed
from rmtkd.surgery import Rewrite, apply_structure
from rmtkd.task import Task

CHECKPOINT = "checkpoint"
RUN_FORMAT = 2  # version of the loop state a checkpoint holds; a run resumes only a checkpoint of its format
STATE_KEYS = {"format", "fingerprint", "next_step", "rewrites", "steps", "original", "original_items",
              "world_size"}


def fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of JSON-ready settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def new_state(fingerprint: str, world_size: int, original: dict[str, Any],
              original_items: dict[str, Any]) -> dict[str, Any]:
    """The loop state of a run that has taken no step yet. ``original_items``: the original model's metric per
    example (evaluation data and validation slice), which the paired intervals of the changes compare against."""
    return {"format": RUN_FORMAT, "fingerprint": fingerprint, "next_step": 0, "rewrites": [], "steps": [],
            "world_size": world_size, "original": original, "original_items": original_items}


def save_model(path: Path, model: nn.Module, task: Task, rewrites: list[dict[str, Any]],
               extra: dict[str, Any]) -> None:
    """``model`` (the original architecture with ``rewrites``, as the loop records them) as a model folder at
    ``path``."""
    save_compressed(model, [Rewrite.from_dict(r) for r in rewrites], path,
                    task.adapter.architecture(task.model), extra=extra, write_assets=task.adapter.save_assets)


def save_checkpoint(out_dir: Path, model: nn.Module, task: Task, state: dict[str, Any]) -> None:
    save_model(out_dir / CHECKPOINT, model, task, state["rewrites"], extra={"loop": state})


def _read(out_dir: Path, task: Task, fingerprint: str) -> Optional[tuple[nn.Module, dict[str, Any]]]:
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    state = read_meta(path).get("loop")
    if not isinstance(state, dict) or not STATE_KEYS <= set(state):
        raise ValueError(f"out_dir: {path} is not a checkpoint of this rmtkd (its rmtkd.json has no loop state "
                         f"with {sorted(STATE_KEYS)}); use another folder")
    if state["format"] != RUN_FORMAT:
        raise ValueError(f"out_dir: {path} holds a run of format {state['format']!r} and this rmtkd resumes format "
                         f"{RUN_FORMAT}; use another folder")
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"out_dir: {out_dir} holds a run with different settings (fingerprint "
                         f"{state['fingerprint']}, this run {fingerprint}); use another folder")
    model, _ = load_compressed(path, task.adapter.build)
    device = next(task.model.parameters()).device
    return model.to(device), state


def resume(out_dir: Path, task: Task, fingerprint: str,
           workers: Workers) -> Optional[tuple[nn.Module, dict[str, Any]]]:
    """(model, loop state) of the run in ``out_dir``, or None if it has none: read by rank 0 and sent to every
    rank (so only rank 0 needs the output folder)."""
    resumed = workers.together(lambda: _read(out_dir, task, fingerprint) if workers.is_main else None)
    state = workers.broadcast(resumed[1] if resumed is not None else None)
    if state is None:
        return None
    if state["world_size"] != workers.world_size:
        raise ValueError(f"out_dir: {out_dir / CHECKPOINT} was made by {state['world_size']} process(es) and this "
                         f"run has {workers.world_size}; resume with {state['world_size']} (each process's data "
                         "shard depends on it), or use another folder")
    if workers.is_main:
        model = resumed[0]
    else:
        model = copy.deepcopy(task.model)
        for data in state["rewrites"]:
            apply_structure(model, Rewrite.from_dict(data))
    return workers.broadcast_module(model), state
