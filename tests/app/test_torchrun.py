"""`torchrun --nproc-per-node 2 -m rmtkd compress`: a whole run with 2 gloo processes, its resume, a world size
that differs from the checkpoint's, and a rank killed in the middle of a step."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rmtkd.app.cli import main
from tests.tiny_text import needs_minilm, save_tiny_bert, write_table

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = [needs_minilm, pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchrun")
    save_tiny_bert(folder / "bert", layers=2)
    write_table(folder / "train.tsv", 240, seed=1)
    write_table(folder / "dev.tsv", 192, seed=2)
    return folder


def compress_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["compress", "--model", str(data / "bert"), "--train", str(data / "train.tsv"), "--eval",
            str(data / "dev.tsv"), "--out", str(out), "--train-samples", "96", "--calibration-samples", "48",
            "--max-len", "12", "--batch-size", "8", "--noise", "quantile", "--tau", "0.6", "--latency-seq-len", "8",
            *extra]


def torchrun(processes: int, args: list[str], **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([str(TORCHRUN), "--nproc-per-node", str(processes), "-m", "rmtkd", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(process: subprocess.Popen, seconds: float = 240) -> tuple[int, str]:
    output, _ = process.communicate(timeout=seconds)
    return process.returncode, output


def test_two_processes_compress_write_once_and_resume(data, tmp_path, capsys):
    """With hidden-state distillation, early stopping on the validation slice and a recovery pass. (130
    validation rows make three batches of 64, so the 3-process attempt below gets as far as the checkpoint.)"""
    out = tmp_path / "run"
    args = compress_args(data, out, "--distill-steps", "2", "--baselines", "--distill-mode", "hidden",
                         "--early-stopping", "1", "--validation-samples", "130", "--recovery-steps", "2")
    code, output = finish(torchrun(2, args))
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2 and report["final"]["parameters"] < report["original"]["parameters"]
    assert report["recovery"]["distillation"]["early_stopping"]["checks"][0]["step"] == 0
    assert output.count("| RMT-KD |") == 1  # one rank reports
    manifest = json.loads((out / ".rmtkd-manifest.json").read_text())["files"]
    assert {"run.json", "report.json", "model/model.safetensors", "teacher/config.json"} <= set(manifest)
    assert not [p for p in out.rglob(".*") if p.name not in (".rmtkd.lock", ".rmtkd-manifest.json")]
    # the model stands alone: one process evaluates it on the whole evaluation file to the reported accuracy
    assert main(["evaluate", "--model", str(out / "model"), "--eval", str(data / "dev.tsv"), "--max-len", "12",
                 "--latency-seq-len", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(report["final"]["accuracy"])

    code, output = finish(torchrun(2, args))
    assert code == 0 and "resuming after step 3 of 3" in output, output
    code, output = finish(torchrun(3, args))
    assert code != 0 and "was made by 2 process(es) and this run has 3; resume with 2" in output, output


def test_a_rank_killed_mid_step_stops_the_job_and_the_command_resumes(data, tmp_path):
    out = tmp_path / "run"
    args = compress_args(data, out, "--distill-steps", "40", "--granularity", "site")
    job = torchrun(2, args, start_new_session=True)
    checkpoint = out / "checkpoint" / "rmtkd.json"
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "the run ended before a rank could be killed"
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    killed_at = time.monotonic()
    os.kill(int(workers[-1]), signal.SIGKILL)
    code, output = finish(job, seconds=120)  # bounded: torchrun stops the other rank
    assert code != 0 and time.monotonic() - killed_at < 120
    done = json.loads(checkpoint.read_text())["loop"]["next_step"]
    code, output = finish(torchrun(2, args))
    assert code == 0 and f"resuming after step {done} of 11" in output, output
