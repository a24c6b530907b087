"""Choosing loop settings on the validation slice: the evaluation data is read only after the choice, so an
evaluation set that favours another candidate cannot change it; the rule; the report; bad input."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rmtkd.calibration import SelectionConfig
from rmtkd.loop import LoopConfig
from rmtkd.metrics import count_parameters
from rmtkd.persistence import load_compressed
from rmtkd.settings_choice import CANDIDATES, Candidate, choose_on_validation, ranking
from tests.method.test_loop import CONFIG, logits, make_batches, trained_task

CANDIDATE_SETTINGS = [Candidate(f"tau={tau}", dataclasses.replace(CONFIG, selection=SelectionConfig(noise="quantile",
                                                                                                 tau=tau)))
                      for tau in (0.3, 0.8)]


def task_with(eval_batches=None):
    task = trained_task()
    task.validation_batches = make_batches(3, 5)
    if eval_batches is not None:
        task.eval_batches = eval_batches
    return task


def correct(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([logits(model.eval(), b).argmax(-1) == b["labels"] for b in batches])


def favouring(loser, winner, seed: int) -> list[dict]:
    """Fresh batches of only the examples ``loser`` gets right and ``winner`` gets wrong."""
    kept = []
    for batch in make_batches(40, seed):
        with torch.no_grad():
            right = (logits(loser.eval(), batch).argmax(-1) == batch["labels"]) & \
                    (logits(winner.eval(), batch).argmax(-1) != batch["labels"])
        if right.any():
            kept.append({key: value[right] for key, value in batch.items()})
    assert kept, "the two candidates never disagree: the test has no evaluation set that would change the choice"
    return kept


def test_an_evaluation_set_that_favours_another_candidate_does_not_change_the_choice(tmp_path):
    quiet = lambda message: None  # noqa: E731
    _, first = choose_on_validation(task_with(), CANDIDATE_SETTINGS, tmp_path / "a", log=quiet)
    chosen = first["selection"]["chosen"]
    other = next(c.name for c in CANDIDATE_SETTINGS if c.name != chosen)
    build = task_with().adapter.build
    winner = load_compressed(tmp_path / "a" / CANDIDATES / chosen / "model", build)[0]
    loser = load_compressed(tmp_path / "a" / CANDIDATES / other / "model", build)[0]
    adversarial = favouring(loser, winner, seed=11)
    assert correct(loser, adversarial).all() and not correct(winner, adversarial).any()

    task = task_with(adversarial)
    events = []
    measure = task.adapter.evaluation_items

    def spied(model, batches):
        events.append("evaluation data" if batches is adversarial else "other data")
        return measure(model, batches)

    task.adapter.evaluation_items = spied
    model, report = choose_on_validation(task, CANDIDATE_SETTINGS, tmp_path / "b", log=events.append)
    assert report["selection"]["chosen"] == chosen  # on the evaluation data the other one is right everywhere
    chosen_at = next(i for i, e in enumerate(events) if e.startswith("chosen on the validation slice"))
    assert "evaluation data" in events and events.index("evaluation data") > chosen_at
    assert events[chosen_at + 1:].count("evaluation data") == 2  # the original and the chosen model, once each
    assert report["final"]["accuracy"] == 0.0 and report["original"]["validation_accuracy"] > 0
    assert [row["name"] for row in report["selection"]["candidates"]] == [c.name for c in CANDIDATE_SETTINGS]
    assert report["selection"]["candidates"] == first["selection"]["candidates"]  # the same validation figures


def test_report_and_model_folder_of_the_choice(tmp_path):
    task = task_with()
    model, report = choose_on_validation(task, CANDIDATE_SETTINGS, tmp_path, within=1.0, log=lambda message: None)
    rows = {row["name"]: row for row in report["selection"]["candidates"]}
    smallest = min(rows, key=lambda name: rows[name]["parameters"])
    assert report["selection"]["chosen"] == smallest and "fewest parameters within 1.0" in report["selection"]["rule"]
    assert rows["tau=0.8"]["parameters"] < rows["tau=0.3"]["parameters"]  # a higher τ keeps fewer directions
    # measured after the choice, on the evaluation data and on the slice, with intervals and paired changes
    assert report["final"]["accuracy"] == pytest.approx(task.evaluate(model))
    assert report["final"]["validation_accuracy"] == pytest.approx(rows[smallest]["validation_accuracy"])
    assert report["original"]["accuracy"] == pytest.approx(task.evaluate(task.model))
    assert set(report["changes"]) == {"evaluation", "validation"}
    assert report["final"]["parameters"] == count_parameters(model) == rows[smallest]["parameters"]
    for step in report["steps"]:
        for site in step["sites"]:
            assert (tmp_path / site["plot"]).is_file()  # paths under the run folder, into the candidate's
    assert json.loads((tmp_path / "report.json").read_text())["selection"] == report["selection"]
    loaded, meta = load_compressed(tmp_path / "model", task.adapter.build)
    assert meta["rewrites"] == report["rewrites"]
    batch = task.eval_batches[0]
    assert torch.equal(logits(loaded, batch), logits(model.eval(), batch))
    again, resumed = choose_on_validation(task, CANDIDATE_SETTINGS, tmp_path, within=1.0, log=lambda message: None)
    assert resumed["final"] == report["final"]  # every candidate resumes from its own finished folder


def test_the_rule():
    assert ranking(0.01, 0.005, 100) < ranking(0.01, 0.0, 200)  # within the budget: the smaller one
    assert ranking(0.01, 0.02, 50) > ranking(0.01, 0.01, 200)  # outside it: after every candidate within
    assert ranking(0.01, 0.02, 50) > ranking(0.01, 0.015, 80)  # none within: the better metric
    assert ranking(None, 0.0, 200) < ranking(None, 0.001, 100)  # no budget: the better metric
    assert ranking(None, 0.0, 100) < ranking(None, 0.0, 200)  # ties: the smaller one


def test_bad_input(tmp_path):
    task = task_with()
    with pytest.raises(ValueError, match="candidates: give at least one"):
        choose_on_validation(task, [], tmp_path)
    with pytest.raises(ValueError, match="candidates: names must differ"):
        choose_on_validation(task, [CANDIDATE_SETTINGS[0]] * 2, tmp_path)
    with pytest.raises(ValueError, match="within: expected a metric budget of 0 or more"):
        choose_on_validation(task, CANDIDATE_SETTINGS, tmp_path, within=-0.1)
    with pytest.raises(ValueError, match="candidate name: 'a/b' is not a folder name"):
        Candidate("a/b", LoopConfig())
    task.validation_batches = []
    with pytest.raises(ValueError, match="task.validation_batches: choosing settings on the validation slice"):
        choose_on_validation(task, CANDIDATE_SETTINGS, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written
