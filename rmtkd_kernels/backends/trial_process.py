"""The child process that runs backend trials for ``tuning`` (an illegal address here cannot fault the parent).

Reads one JSON request on stdin: op, sizes, layout, dtype, device, the backends to try in order, and the modules that
registered them (imported first, so that backends defined outside rmtkd_kernels exist here too). Prints
``START <backend>`` before each trial and ``RESULT <json>`` after it, flushing each line, so that the parent
knows which backend was running if this process dies.
"""
from __future__ import annotations

import importlib
import json
import sys

import torch

import rmtkd_kernels  # noqa: F401 - registers the built-in backends
from rmtkd_kernels.backends.problem import Problem
from rmtkd_kernels.backends.trials import Outcome, run_trials


def main() -> None:
    request = json.loads(sys.stdin.read())
    for module in request["modules"]:
        importlib.import_module(module)
    problem = Problem(request["op"], tuple(request["sizes"]), request["layout"])
    dtype, device = getattr(torch, request["dtype"]), torch.device(request["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)

    def starting(name: str) -> None:
        print(f"START {name}", flush=True)

    def report(outcome: Outcome) -> None:
        print("RESULT " + json.dumps(outcome.as_dict()), flush=True)

    run_trials(problem, dtype, device, request["backends"], starting, report)


if __name__ == "__main__":
    main()
