"""How the command runs: in one process, or in each of the processes a launcher started (torchrun, or anything
that sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT as it does)."""
from __future__ import annotations

import argparse
import contextlib
import os
from datetime import timedelta
from typing import Iterator

import torch

from rmtkd.distributed import Workers

TIMEOUT_VARIABLE = "RMTKD_DIST_TIMEOUT"  # seconds a collective may wait for a rank (default 1800)


@contextlib.contextmanager
def launched_processes(args: argparse.Namespace) -> Iterator[Workers]:
    """The processes of this run. Under a launcher: a process group (nccl when --device is CUDA, each rank on
    the GPU of its LOCAL_RANK; gloo on the CPU), ended when the command ends."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Workers()
        return
    import torch.distributed as dist

    cuda = str(getattr(args, "device", "cpu")).startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise ValueError("--device: CUDA was asked for, and this machine has no GPU torch can use")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    seconds = float(os.environ.get(TIMEOUT_VARIABLE, "1800"))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=seconds))
    try:
        workers = Workers(dist.group.WORLD)
        yield workers
        workers.barrier()  # no rank closes its connections while another still reads from them
    finally:
        dist.destroy_process_group()
