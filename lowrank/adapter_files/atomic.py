"""Crash-safe writing: a pair of files (tensors + configuration) replaced as one, and the debris of killed saves.

A save writes both files into private temporary folders beside their targets,
``.<file>.<host>.<pid>.<random>.tmp``, flushes them, then renames them into place (:func:`replace_pair`).
A killed save leaves such folders behind; the next save of the same file removes those of processes
that no longer run on this host and warns how many files and bytes it removed. It never touches
another file's temporaries nor those of a live process.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_TEMPORARY_TAIL = re.compile(r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp")


def temporary_prefix(target: Path, pid: int | None = None) -> str:
    """Name prefix of the temporary folders that saves of ``target`` by process ``pid`` (default: this one) use."""
    return f".{target.name}.{_HOST}.{os.getpid() if pid is None else pid}."


def notify(message: str) -> None:
    """Warn with ``message``, attributed to the first caller outside this package (the user's save or load)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and (frame.f_code.co_filename.startswith(_PACKAGE_DIR)
                                 or frame.f_code.co_filename == contextlib.__file__):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host; ``True`` whenever it cannot be told."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _leftovers(target: Path) -> list[Path]:
    """Temporary folders of earlier saves of ``target`` whose process is gone (same host, not this process)."""
    head = f".{target.name}."
    if not target.parent.is_dir():
        return []
    found = []
    for entry in target.parent.iterdir():
        match = _TEMPORARY_TAIL.fullmatch(entry.name[len(head):]) if entry.name.startswith(head) else None
        if match is None or match["host"] != _HOST or not entry.is_dir():
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and not _process_alive(pid):
            found.append(entry)
    return sorted(found)


def remove_leftovers(target: Path) -> tuple[int, int, int]:
    """Delete the debris of killed saves of ``target``; warn and return ``(folders, files, bytes)`` removed."""
    folders = _leftovers(target)
    files = size = 0
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                files += 1
                size += (Path(root) / name).stat().st_size
        shutil.rmtree(folder, ignore_errors=True)
    if folders:
        notify(f"removed {len(folders)} leftover temporary folder(s) ({files} file(s), {size:,} bytes) of "
                f"earlier interrupted saves of {target}")
    return len(folders), files, size


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; elsewhere the rename is all there is)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """A path to write ``path``'s next version at, in a private temporary folder beside it.

    Clears the debris of killed saves of ``path`` first. Writers that make their own temporaries
    (safetensors' ``save_file`` does) make them inside the folder, so a killed save leaves exactly
    one folder, which the next save of ``path`` recognises by its name. The folder is removed on exit.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    workdir = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield workdir / path.name
    finally:
        shutil.rmtree(workdir, ignore_errors=True)



def replace_file(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` by ``write(staged_path)`` under a temporary name, flush it, then rename it into place:
    a crash at any moment leaves the old file or the new one, never part of one."""
    with _staging(path) as staged:
        write(staged)
        _fsync_file(staged)
        os.replace(staged, path)
        _fsync_directory(path.parent)


def replace_pair(tensors_path: Path, config_path: Path, write_tensors: Callable[[Path], None], config_text: str) -> None:
    """Write ``tensors_path`` (by ``write_tensors(staged_path)``) and ``config_path`` (``config_text``) as one save.

    Both files are written and flushed to disk under temporary names first. Then the old
    configuration is removed, the tensors renamed into place, and the configuration renamed in
    last: a crash at any moment leaves the old pair, the new pair, or (for a few milliseconds'
    worth of moments) tensors without a configuration, never a configuration beside tensors of
    another save (a reader would take the wrong rank or alpha).
    """
    folder = tensors_path.parent
    with _staging(tensors_path) as staged_tensors, _staging(config_path) as staged_config:
        write_tensors(staged_tensors)
        staged_config.write_text(config_text)
        _fsync_file(staged_tensors)
        _fsync_file(staged_config)
        config_path.unlink(missing_ok=True)
        _fsync_directory(folder)
        os.replace(staged_tensors, tensors_path)
        _fsync_directory(folder)
        os.replace(staged_config, config_path)
        _fsync_directory(folder)
