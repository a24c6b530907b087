"""``rmtkd compress --select-on validation --grid SETTING=V1,V2 ...``: the command-line side of choosing settings
on the validation slice (:mod:`rmtkd.settings_choice`): the options, and the grid they name as candidates."""
from __future__ import annotations

import argparse
import itertools
from typing import Callable

from rmtkd.loop import LoopConfig
from rmtkd.settings_choice import Candidate

# The settings a grid may vary: the loop's own (one teacher, one data split serve every candidate).
GRID_SETTINGS: dict[str, type] = {"tau": float, "target-reduction": float, "target-flop-reduction": float,
                                  "recovery-steps": int}
MAX_CANDIDATES = 16


def add_choice_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--select-on", choices=("validation",), default=None,
                   help="compress once per --grid setting, choose among them on the validation slice alone "
                        "(--validation-samples), then measure the chosen model once on --eval")
    c.add_argument("--grid", action="append", default=[], metavar="SETTING=V1,V2",
                   help=f"with --select-on: values of one setting to try ({', '.join(GRID_SETTINGS)}); repeat "
                        "for several settings (every combination is tried); other options apply to every candidate")
    c.add_argument("--select-within", type=float, default=None, metavar="DROP",
                   help="with --select-on: choose the smallest candidate whose validation metric is at most DROP "
                        "worse than the teacher's (accuracy: a fraction); default: the best validation metric")


def _axis(spec: str) -> tuple[str, list]:
    """(setting, values) of one --grid SETTING=V1,V2."""
    setting, sep, listed = spec.partition("=")
    if not sep or setting not in GRID_SETTINGS:
        raise ValueError(f"--grid: expected SETTING=V1,V2 with SETTING one of {', '.join(GRID_SETTINGS)}, got "
                         f"{spec!r}")
    kind = GRID_SETTINGS[setting]
    try:
        values = [kind(value) for value in listed.split(",")]
    except ValueError:
        raise ValueError(f"--grid: {setting} takes {kind.__name__} values separated by commas, got {listed!r}") \
            from None
    if len(set(values)) != len(values):
        raise ValueError(f"--grid: {setting} lists a value twice ({listed!r})")
    return setting, values


def grid_candidates(args: argparse.Namespace,
                    loop_config: Callable[[argparse.Namespace], LoopConfig]) -> list[Candidate]:
    """The candidates of --grid (every combination of the listed values over the command's other settings, each
    checked as the command line checks its own); [] without --select-on."""
    if args.select_on is None:
        if args.grid or args.select_within is not None:
            raise ValueError(f"{'--grid' if args.grid else '--select-within'}: only with --select-on validation")
        return []
    if not args.grid:
        raise ValueError("--select-on: give the settings to choose among with --grid, e.g. --grid tau=0.7,0.8")
    if args.select_within is not None and args.select_within < 0:
        raise ValueError(f"--select-within: expected a metric budget of 0 or more, got {args.select_within}")
    axes = [_axis(spec) for spec in args.grid]
    settings = [setting for setting, _ in axes]
    if len(set(settings)) != len(settings):
        raise ValueError(f"--grid: each setting once (values separated by commas), got {settings}")
    combinations = list(itertools.product(*(values for _, values in axes)))
    if len(combinations) > MAX_CANDIDATES:
        raise ValueError(f"--grid: {len(combinations)} combinations, at most {MAX_CANDIDATES}: each is a whole "
                         "compression run")
    candidates = []
    for values in combinations:
        varied = argparse.Namespace(**vars(args))
        for setting, value in zip(settings, values):
            setattr(varied, setting.replace("-", "_"), value)
        name = ",".join(f"{setting}={value}" for setting, value in zip(settings, values))
        try:
            candidates.append(Candidate(name, loop_config(varied)))
        except ValueError as error:
            raise ValueError(f"--grid: the candidate {name} is refused: {error}") from None
    return candidates
