"""The output folder of a command: locked by the run that uses it, claimed for one run's settings (run.json),
resumed by the same settings, replaced only with --overwrite, and with a manifest of every file rmtkd wrote
into it, so that --overwrite removes those and nothing else.

- Lock: ``.rmtkd.lock``, an OS lock (flock) held for the whole run; it dies with the process.
- Manifest: ``.rmtkd-manifest.json``, {relative path: [sizes of every version rmtkd wrote]}, updated before each
  file is renamed into place (``rmtkd.atomic`` announces them). A folder without one is never taken for a run.
- Crash debris: at the start of a run, a folder swap cut between its renames is undone and the writers'
  temporaries are removed (``rmtkd.atomic.recover``).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

from rmtkd.atomic import announcing_writes, recover, write_text_atomically
from rmtkd.calibration import PLOTS
from rmtkd.checkpoint import CHECKPOINT, RUN_FORMAT
from rmtkd.settings_choice import CANDIDATES

RUN_FILE = "run.json"  # the arguments of the run that owns an output folder
RUN_ENTRIES = {"teacher", CHECKPOINT, "model", PLOTS, "report.json", "report.md", "summary.md", RUN_FILE,
               CANDIDATES}
# Folders a run writes as a whole (a swap replaces everything); the candidate runs of a choice hold such folders.
REPLACED_WHOLE = {"teacher", CHECKPOINT, "model", CANDIDATES}
NOT_IN_FINGERPRINT = {"run", "command", "out", "overwrite", "json", "baselines", "latency_seq_len", "device"}
LOCK_FILE = ".rmtkd.lock"
MANIFEST_FILE = ".rmtkd-manifest.json"


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on ``folder`` (its .rmtkd.lock names the holder's PID) for the block."""
    handle = open(folder / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ValueError(f"--out: {folder} is in use by another rmtkd run (PID {holder}); wait for it to end "
                             "or choose another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


class Manifest:
    """The files rmtkd wrote into a folder, with the sizes of every version it wrote."""

    def __init__(self, folder: Path, files: dict[str, list[int]]) -> None:
        self.folder, self.files = folder, files

    @classmethod
    def read(cls, folder: Path) -> "Manifest | None":
        path = folder / MANIFEST_FILE
        if not path.is_file():
            return None
        try:
            files = json.loads(path.read_text(encoding="utf-8"))["files"]
            if not isinstance(files, dict):
                raise TypeError("files is not an object")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"--out: {path} is damaged ({error}); move the folder's contents away or choose "
                             "another folder") from None
        return cls(folder, {name: [int(size) for size in sizes] for name, sizes in files.items()})

    def save(self) -> None:
        """Written through its own temporary and rename (not announced: it is not a run's file)."""
        tmp = self.folder / f".{MANIFEST_FILE}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({"files": self.files}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.folder / MANIFEST_FILE)

    def record(self, final: Path, staged: Path) -> None:
        """A file about to be put in place (an ``rmtkd.atomic`` listener)."""
        try:
            name = final.resolve().relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            return  # written elsewhere
        sizes = self.files.setdefault(name, [])
        size = staged.stat().st_size
        if size not in sizes:
            sizes.append(size)
            self.save()

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is a regular file rmtkd wrote (listed, with one of the sizes it wrote)."""
        name = path.relative_to(self.folder).as_posix()
        return not path.is_symlink() and path.is_file() and path.stat().st_size in self.files.get(name, ())

    def run_files(self) -> tuple[list[Path], list[str]]:
        """(the files of the run entries that rmtkd wrote, the names of those it did not: a user's, changed
        since, or links)."""
        owned, foreign = [], []
        for entry in sorted(RUN_ENTRIES):
            path = self.folder / entry
            items = [path] if not path.is_dir() or path.is_symlink() else sorted(path.rglob("*"))
            for item in items:
                if self.owns(item):
                    owned.append(item)
                elif item.is_symlink() or item.is_file():
                    foreign.append(item.relative_to(self.folder).as_posix())
        return owned, foreign

    def remove_run(self) -> list[str]:
        """Delete every file of the run entries that rmtkd wrote and the folders this empties; returns the files
        left because rmtkd did not write them. Refuses, deleting nothing, when such a file sits where a new run
        replaces what is there (a whole model folder, a report), since it would be lost."""
        owned, foreign = self.run_files()
        blocking = [name for name in foreign if "/" not in name or name.split("/")[0] in REPLACED_WHOLE]
        if blocking:
            raise ValueError(f"--overwrite: {self.folder} holds files rmtkd did not write (or that changed since) "
                             f"where the new run writes: {', '.join(blocking[:5])}; move them away first")
        for item in owned:
            item.unlink()
        for entry in sorted(RUN_ENTRIES):
            path = self.folder / entry
            if path.is_dir() and not path.is_symlink():
                for folder in [*sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True), path]:
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only when empty
        self.files = {name: sizes for name, sizes in self.files.items() if name in foreign}
        self.save()
        return foreign


def vars_for_run(args: argparse.Namespace) -> dict:
    """The settings that make a run what it is (run.json): what a resume must repeat, with the run format."""
    return {"format": RUN_FORMAT} | {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IN_FINGERPRINT}


@contextlib.contextmanager
def claimed_output_folder(out: Path, args: argparse.Namespace, log: Callable[[str], None]) -> Iterator[None]:
    """Make ``out`` this run's folder for the block: new, or an earlier run of the same settings (resumed), or,
    with --overwrite, an earlier rmtkd run whose files are removed. Nothing rmtkd did not write is touched."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        candidate_runs = sorted(p for p in (out / CANDIDATES).glob("*") if p.is_dir())
        for folder in (out, out / PLOTS, *(f for run in candidate_runs for f in (run, run / PLOTS))):
            for done in recover(folder):
                log(f"{out}: {done}")
        manifest = Manifest.read(out)
        visible = sorted(e.name for e in out.iterdir() if not e.name.startswith("."))
        foreign = [name for name in visible if name not in RUN_ENTRIES]
        if foreign or (visible and manifest is None):
            what = foreign[0] if foreign else f"{visible[0]}, but no {MANIFEST_FILE}"
            raise ValueError(f"--out: {out} holds files that are not an rmtkd run ({what}); choose a new folder")
        manifest = manifest or Manifest(out, {})
        settings = vars_for_run(args)
        previous = _previous_settings(out)
        if any(name != RUN_FILE for name in visible) and not _same_run(previous, settings):
            if not args.overwrite:
                changed = sorted(k for k in set(settings) | set(previous or {})
                                 if (previous or {}).get(k) != settings.get(k))
                raise ValueError(f"--out: {out} holds a run with other settings ({', '.join(changed[:4])} differ); "
                                 "re-run with its settings to resume, pass --overwrite to replace it, or choose "
                                 "another folder")
            left = manifest.remove_run()
            if left:
                log(f"--overwrite: left {len(left)} file(s) rmtkd did not write in {out}: {', '.join(left[:5])}")
        manifest.save()
        with announcing_writes(manifest.record):
            write_text_atomically(out / RUN_FILE, json.dumps(settings, indent=2) + "\n")
            yield


def _same_run(previous: dict | None, settings: dict) -> bool:
    """Whether a folder's run.json describes a run with exactly these settings."""
    return previous == settings


def _previous_settings(out: Path) -> dict | None:
    path = out / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {RUN_FILE: "unreadable"}  # differs from any settings: resumed by nothing, replaced by --overwrite
