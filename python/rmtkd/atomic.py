"""Writing files and folders so that a crash never leaves half of one where a whole one was.

Every writer stages its output in a temporary sibling (``.NAME.tmp-XXXXXXXX``) and renames it into place; a
folder's previous version is moved aside (``.NAME.old-XXXXXXXX``) for the moment of the swap. A crash leaves at
most such temporaries beside complete files: :func:`recover` puts a folder's previous version back if the crash
fell between the two renames of a swap, and removes the rest. Listeners (:func:`announcing_writes`) hear of
every file before it is renamed into place, so an owner can keep a manifest of what it wrote.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<role>tmp|old)-[0-9a-f]{8}(?P<suffix>\.png)?$")
Listener = Callable[[Path, Path], None]  # (final path of a file, the staged file that becomes it)
_LISTENERS: list[Listener] = []


@contextlib.contextmanager
def announcing_writes(listener: Listener) -> Iterator[None]:
    """Call ``listener(final, staged)`` for every file the writers below are about to put in place."""
    _LISTENERS.append(listener)
    try:
        yield
    finally:
        _LISTENERS.remove(listener)


def _announce(final: Path, staged: Path) -> None:
    """Tell the listeners about ``staged`` (a file, or a folder: each file in it) before it becomes ``final``."""
    if not _LISTENERS:
        return
    files = [(final, staged)] if staged.is_file() else [
        (final / item.relative_to(staged), item) for item in sorted(staged.rglob("*")) if item.is_file()]
    for listener in list(_LISTENERS):
        for target, source in files:
            listener(target, source)


def _staging(path: Path, role: str = "tmp") -> Path:
    return path.parent / f".{path.name}.{role}-{uuid.uuid4().hex[:8]}"


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename: readers see the old or the new file, never half."""
    path = Path(path)
    tmp = _staging(path)
    tmp.write_text(text, encoding="utf-8")
    _announce(path, tmp)
    os.replace(tmp, path)


def save_figure_atomically(figure: Any, path: str | Path) -> Path:
    """Save a matplotlib Figure as PNG through a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.png"
    figure.savefig(tmp, format="png")
    _announce(path, tmp)
    os.replace(tmp, path)
    return path


def write_folder_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a fresh sibling folder, then swap it in place of ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging(path)
    tmp.mkdir()
    try:
        write(tmp)
        _announce(path, tmp)
        old = _staging(path, "old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover(folder: Path) -> list[str]:
    """After a crash: restore a folder whose swap was cut between its two renames (its previous version is the
    newest ``.NAME.old-*``), then remove every temporary the writers left in ``folder``. Returns what it did."""
    if not folder.is_dir():
        return []
    done = []
    temporaries = sorted((item for item in folder.iterdir() if TEMPORARY.match(item.name)),
                         key=lambda item: item.stat().st_mtime, reverse=True)
    for item in temporaries:
        match = TEMPORARY.match(item.name)
        final = folder / (match["name"] + (match["suffix"] or ""))
        if match["role"] == "old" and item.is_dir() and not final.exists():
            os.replace(item, final)
            done.append(f"restored {final.name} from an interrupted write")
            continue
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        done.append(f"removed {item.name}")
    return done
