"""Atomic result files: every file is written to a temporary name in its folder and renamed into place.

A kill at any moment therefore leaves either the previous complete file or the new complete one,
never a truncated one. The temporary name keeps the file's suffix, so writers that infer the format
from it (matplotlib) still work.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

# Tests set NNDT_KILL_AFTER_WRITE=<file name> to kill the process right after that file is in place, or
# <file name>@<marker path> to do it once (the marker is created first: restarted processes go on).
_KILL_AFTER, _, _KILL_MARKER = (os.environ.get("NNDT_KILL_AFTER_WRITE") or "").partition("@")


def _test_kill(path: Path) -> None:
    if not _KILL_AFTER or path.name != _KILL_AFTER:
        return
    if _KILL_MARKER:
        try:
            os.close(os.open(_KILL_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _test_kill(path)  # test hook: a kill -9 at exactly this point of a run


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str))


def write_csv(path: str | Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    fields = fieldnames or list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_figure(fig, path: str | Path, **kwargs) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_facts(path: str | Path) -> dict:
    """What a run records of a file it wrote, to check it later: its size and SHA-256."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def check_files(folder: str | Path, recorded: dict) -> str | None:
    """None when every file of ``recorded`` ({name: {bytes, sha256}}) is in ``folder`` as recorded, else what
    is wrong with the first one that is not."""
    for name, facts in recorded.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != facts.get("bytes") or sha256_file(path) != facts.get("sha256"):
            return f"{name} is not the file the run wrote (size or checksum differs)"
    return None
