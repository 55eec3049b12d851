"""The live record of a run: its manifest (with a heartbeat) and how it reacts to Ctrl-C / SIGTERM.

The manifest says which process on which host runs the experiment and refreshes ``heartbeat`` every
``heartbeat_interval_s`` seconds from a background thread, so a reader can tell a live run from one
that was killed: ``status`` is ``running`` and the heartbeat is older than a few intervals (or the
process is gone from this host) means it crashed.

Signals: Ctrl-C and SIGTERM raise ``KeyboardInterrupt`` except inside :meth:`Interrupts.deferred`
sections (result and checkpoint writing), where they are remembered and raised when the section ends.
Once the run is stopping, further signals are only remembered, so a second Ctrl-C never interrupts the
writing of what exists.
"""

from __future__ import annotations

import copy
import datetime as dt
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import torch

from experiments.kinds.base import REPO_ROOT
from foundation.results_io import write_json
from foundation.schema import ConfigError, excerpt

HEARTBEAT_INTERVAL_S = 15.0
STALE_AFTER_INTERVALS = 4
DEFAULT_OUTPUT_DIR = REPO_ROOT / "experiments" / "outputs"


def now_iso() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def new_output_dir(base: Path, name: str) -> Path:
    """``base/<YYYY-MM-DD_HH-MM-SS>_<name>``, with a suffix when that folder exists already."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    candidate = base / f"{stamp}_{name}"
    suffix = 1
    while candidate.exists():
        candidate = base / f"{stamp}_{name}_{suffix}"
        suffix += 1
    return candidate


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def pick_device(requested: str | None, use_cuda, say: bool = True) -> torch.device:
    """``--device`` (cpu | cuda) over ``experiment.use_cuda``: ``auto`` takes CUDA when there is one and the CPU
    otherwise, ``true`` requires CUDA (one line when there is none), ``false`` is the CPU."""
    if requested == "cpu" or (requested is None and use_cuda is False):
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    if use_cuda is True:
        raise ConfigError("experiment.use_cuda: true requires a CUDA device and none is available; use "
                          "use_cuda: auto (CUDA when present, else the CPU) or --device cpu")
    return torch.device("cpu")


SMALL_MODEL_PARAMETERS = 5000  # below this, one thread: kernel launches dominate and threads only contend


def choose_threads(setting, model) -> dict:
    """Set torch's thread count for a run: ``experiment.threads`` when a number, else (``auto``) one thread for
    models of fewer than ``SMALL_MODEL_PARAMETERS`` parameters unless ``OMP_NUM_THREADS`` says otherwise, torch's
    default for larger ones. Returns what the manifest records."""
    parameters = sum(p.numel() for p in model.parameters()) if model is not None else 0
    if setting != "auto":
        torch.set_num_threads(int(setting))
        return {"count": int(setting), "chosen_by": "experiment.threads"}
    if os.environ.get("OMP_NUM_THREADS"):
        return {"count": torch.get_num_threads(), "chosen_by": "OMP_NUM_THREADS"}
    if parameters and parameters < SMALL_MODEL_PARAMETERS:
        torch.set_num_threads(1)
        return {"count": 1, "chosen_by": f"auto: a model of {parameters:,} parameters runs fastest on one thread"}
    return {"count": torch.get_num_threads(), "chosen_by": f"auto: torch's default for {parameters:,} parameters"}


class RunRecord:
    """The manifest of one run; every change goes through here and is written atomically."""

    def __init__(self, path: Path | None, manifest: dict[str, Any],
                 heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S):
        self.path = path
        self.manifest = manifest
        self.lock = threading.RLock()
        self.interval = heartbeat_interval_s
        self.manifest.update(pid=os.getpid(), host=socket.gethostname(), heartbeat=now_iso(),
                             heartbeat_interval_s=heartbeat_interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def save(self) -> None:
        if self.path is None:
            return
        with self.lock:
            self.manifest["heartbeat"] = now_iso()
            write_json(self.path, copy.deepcopy(self.manifest))

    def update(self, **fields) -> None:
        with self.lock:
            self.manifest.update(fields)
            self.save()

    def pair(self, name: str) -> dict[str, Any]:
        return next(p for p in self.manifest["pairs"] if p["problem_name"] == name)

    def update_pair(self, name: str, **fields) -> None:
        with self.lock:
            self.pair(name).update(fields)
            self.save()

    RESERVE_NAME = ".manifest.reserve"

    def reserve(self) -> None:
        """Set aside disk space for the manifest's last word: a run that stops on a full disk frees it to record
        why (at least 256 KiB, twice the manifest's size)."""
        if self.path is None:
            return
        size = max(256 << 10, 2 * (self.path.stat().st_size if self.path.is_file() else 0))
        spare = self.path.with_name(self.RESERVE_NAME)
        try:
            with open(spare, "wb") as fh:
                fh.write(b"\0" * size)
        except OSError:
            spare.unlink(missing_ok=True)

    def release_reserve(self) -> None:
        if self.path is not None:
            self.path.with_name(self.RESERVE_NAME).unlink(missing_ok=True)

    def last_word(self, **fields) -> bool:
        """Record how the run ended when writing is failing (a full disk): the reserve is freed first; returns
        whether the manifest could be written."""
        self.release_reserve()
        try:
            self.update(**fields)
            return True
        except OSError:
            return False

    def start_heartbeat(self) -> None:
        if self.path is None or self._thread is not None:
            return

        def beat():
            while not self._stop.wait(self.interval):
                try:
                    self.save()
                except OSError:
                    pass  # the next regular write reports real problems

        self._thread = threading.Thread(target=beat, name="manifest-heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_is_live(manifest: dict[str, Any], now: dt.datetime | None = None) -> bool:
    """True when the manifest belongs to a run that is still going (not finished, not crashed)."""
    if manifest.get("status") != "running":
        return False
    if manifest.get("host") == socket.gethostname() and isinstance(manifest.get("pid"), int):
        if not _process_alive(manifest["pid"]) or manifest["pid"] == os.getpid():
            return False
    try:
        beat = dt.datetime.fromisoformat(manifest["heartbeat"])
        interval = float(manifest.get("heartbeat_interval_s", HEARTBEAT_INTERVAL_S))
    except (KeyError, TypeError, ValueError):
        return False
    age = ((now or dt.datetime.now()) - beat).total_seconds()
    return age <= STALE_AFTER_INTERVALS * interval


class Interrupts:
    """Ctrl-C / SIGTERM as ``KeyboardInterrupt``, held back inside deferred sections."""

    def __init__(self):
        self.depth = 0
        self.pending = False
        self.stopping = False
        self.last_signal: int | None = None

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal

    def install(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def signal_name(self) -> str:
        return signal.Signals(self.last_signal).name if self.last_signal is not None else "a signal"

    def _handle(self, signum, frame) -> None:
        self.last_signal = signum
        if self.depth or self.stopping:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.pending and not self.depth and not self.stopping:
            self.pending = False
            raise KeyboardInterrupt

    def stop(self) -> None:
        """From now on signals are only remembered: the run is writing what it has and ending."""
        self.stopping = True


def run_interruptible(body: Callable[[Interrupts], int], what: str, restore_signals: bool = True) -> int:
    """``body(interrupts)``'s exit status, with Ctrl-C / SIGTERM / SIGHUP handled from here on (a signal before
    ``body`` holds them back ends it with one line and exit 130: nothing was written yet). After it, torch's
    thread count is what it was (a run's choice does not outlive it: a notebook or a test runs several) and, with
    ``restore_signals``, so are the signal handlers (``False``: they stay held back, the process is exiting)."""
    interrupts = Interrupts()
    previous_handlers = {sig: signal.getsignal(sig) for sig in Interrupts.SIGNALS}
    threads = torch.get_num_threads()
    interrupts.install()
    try:
        return body(interrupts)
    except KeyboardInterrupt:
        print(f"interrupted before {what} started; nothing was written", file=sys.stderr)
        return 130
    finally:
        interrupts.stop()
        torch.set_num_threads(threads)
        if restore_signals:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)


def read_manifest(path: str | Path, what: str) -> dict[str, Any]:
    """A run's manifest.json, or one ConfigError line saying what is wrong with it (``what`` names the
    command, e.g. "--resume DIR")."""
    try:
        manifest = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what}: {Path(path).name} is missing; not an output folder of run.py") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        reason = "truncated or not JSON" if isinstance(exc, ValueError) else type(exc).__name__
        raise ConfigError(f"{what}: {Path(path).name} cannot be read ({reason}); the folder's record is "
                          f"damaged") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{what}: {Path(path).name} is not a run manifest (not a mapping)")
    return manifest


def check_pair_entries(manifest: dict[str, Any], what: str, statuses) -> None:
    """Every pair entry of a manifest names its pair and has a known status (one ConfigError line if not)."""
    pairs = manifest.get("pairs")
    if not isinstance(pairs, list):
        raise ConfigError(f"{what}: manifest.json has no list of pairs; the folder's record is damaged")
    for index, pair in enumerate(pairs):
        if not isinstance(pair, dict) or not isinstance(pair.get("problem_name"), str):
            raise ConfigError(f"{what}: manifest.json pair {index} has no problem_name; the folder's record is "
                              f"damaged")
        if pair.get("status") not in statuses:
            raise ConfigError(f"{what}: manifest.json pair {pair['problem_name']} has status "
                              f"{pair.get('status')!r}, not one of {', '.join(statuses)}; the folder's record is "
                              f"damaged")
        for field, kinds in PAIR_FIELD_TYPES.items():
            if field in pair and pair[field] is not None and (not isinstance(pair[field], kinds)
                                                              or isinstance(pair[field], bool)):
                raise ConfigError(f"{what}: manifest.json pair {pair['problem_name']}: {field} is "
                                  f"{type(pair[field]).__name__}, not {' or '.join(k.__name__ for k in kinds)}; the "
                                  f"folder's record is damaged")
        files = pair.get("files")
        if isinstance(files, dict):
            for name, facts in files.items():
                if not (isinstance(facts, dict) and isinstance(facts.get("bytes"), int)
                        and isinstance(facts.get("sha256"), str)):
                    raise ConfigError(f"{what}: manifest.json pair {pair['problem_name']}: the record of file "
                                      f"{excerpt(name)} is not {{bytes, sha256}}; the folder's record is damaged")


# what every field of a manifest's pair entry holds (a field that is there must have this type)
PAIR_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "alg_name": (str,), "error": (str,), "traceback": (str,), "files": (dict,), "seconds": (int, float),
    "rounds_completed": (int,), "outer_iterations": (int,), "checkpoint_round": (int,), "diverged_round": (int,),
    "last_finite_round": (int,), "robot_resets": (int,), "bytes_sent_total": (int, float), "node_stack": (dict,),
    "faulty_robots": (list,), "checkpoint_bytes": (int,), "checkpoint_seconds": (int, float),
}


LOCK_NAME = ".lock"


class FolderLock:
    """One writer per output folder: an exclusive ``fcntl`` lock on ``<folder>/.lock``, held while the process
    lives (the kernel drops it when the process ends, however it ends, so a dead run never leaves a stale
    lock). The file says who holds it: pid, host and start time."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fh: IO[str] | None = None

    def acquire(self, what: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ConfigError(f"{what}: another run is writing into {self.path.parent} ({holder}); wait for it "
                              f"to end or choose another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files that writes killed half-way left in ``folder`` (``.<name>.tmp-<pid>...``)."""
    removed = []
    for path in Path(folder).glob(".*.tmp-*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
