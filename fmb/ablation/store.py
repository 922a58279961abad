"""The study directory on disk: study.json (what study this is), results.jsonl (one line per
finished trial, append-only), and a lock so two sweeps never write one DIR at once.

results.jsonl is the source of truth for resume. Each line is appended with a single
os.write of the complete line on an O_APPEND descriptor and fsynced, so a kill at any moment
leaves either the whole line or none of it. Writers may be several (trials finishing at once,
SLURM jobs on other nodes): each append holds an exclusive lock on results.lock (fcntl/POSIX
locks, which NFS forwards to its lock manager) and, for a completed trial, first re-reads the
file, so a trial that two attempts finished is recorded once. A trial re-run after failing
appends a new line; readers keep the last line per trial id.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from fmb.errors import FmbError
from fmb.utils import atomic_write_text

STUDY_FILE = "study.json"
RESULTS_FILE = "results.jsonl"
LOCK_FILE = ".lock"
RESULTS_LOCK = "results.lock"


def invocation_files(files) -> list[str]:
    """The -c files as study.json records them for `--resume`: a path that exists, absolute (so
    the study resumes from any folder); a preset name such as `digits_quick` as the name, which
    resolves to the shipped preset from anywhere (made absolute, it would name a file in the
    folder the study happened to start from, which does not exist)."""
    return [str(Path(f).expanduser().resolve()) if Path(f).expanduser().exists() else str(f) for f in files]


def _flatten(d, prefix=""):
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def describe_difference(old: dict, new: dict, limit: int = 3) -> str:
    a, b = _flatten(old), _flatten(new)
    diffs = [f"{k}: {a.get(k)!r} here, {b.get(k)!r} now" for k in sorted(a.keys() | b.keys())
             if a.get(k) != b.get(k)]
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


class StudyDir:
    def __init__(self, root):
        self.root = Path(root)
        self.results_path = self.root / RESULTS_FILE
        self._lock_fd = None

    def read_study(self) -> dict | None:
        path = self.root / STUDY_FILE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            raise FmbError(f"{path} is unreadable; this DIR is not a usable fmb ablate study, choose another --out") from None

    def check(self, fingerprint: str, identity: dict) -> None:
        """Refuse a DIR that holds another study or something else entirely. Reads only."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise FmbError(f"--out {self.root} is a file; expected a directory for the study")
        stored = self.read_study()
        if stored is None:
            if any(self.root.iterdir()):
                raise FmbError(f"--out {self.root} is not empty and holds no {STUDY_FILE}, so it is not an "
                               f"fmb ablate study; choose an empty or new directory")
            return
        if stored.get("fingerprint") != fingerprint:
            difference = describe_difference(stored.get('identity', {}), identity)
            raise FmbError(f"--out {self.root} holds a different study ({difference}); "
                           f"its results would not be comparable: use another --out, or the study's own config")

    def open(self, fingerprint: str, identity: dict, invocation: dict) -> None:
        """Create the DIR, take the lock, record the study (kept across resumes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel even on SIGKILL
        except BlockingIOError:
            os.close(fd)
            raise FmbError(f"--out {self.root} is in use by another fmb ablate; wait for it or use another --out") from None
        self._lock_fd = fd
        stored = self.read_study() or {"created_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        stored.update({"fmb_ablate": 1, "fingerprint": fingerprint, "identity": identity, "invocation": invocation})
        atomic_write_text(self.root / STUDY_FILE, json.dumps(stored, indent=2, sort_keys=True) + "\n")
        self._drop_partial_tail()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _drop_partial_tail(self) -> None:
        # Only a crash of the machine mid-write can leave an unterminated last line; cut it
        # so the next append starts on a line of its own.
        if not self.results_path.exists():
            return
        lock = os.open(self.root / RESULTS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX)  # a job on another node may be appending right now
            data = self.results_path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data[: data.rfind(b"\n") + 1]
                atomic_write_text(self.results_path, keep.decode())
        finally:
            os.close(lock)

    def records(self) -> dict[str, dict]:
        """trial id → its latest record (a failed trial that was re-run has two lines)."""
        out: dict[str, dict] = {}
        if not self.results_path.exists():
            return out
        for line in self.results_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # partial tail, dropped on the next open
            out[rec["trial_id"]] = rec
        return out

    def append(self, record: dict) -> bool:
        """Append one record; False (nothing written) when the trial is already recorded as
        completed, so every trial is in the results exactly once however many attempts ran."""
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        self.root.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.root / RESULTS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX)  # POSIX lock: held across processes and NFS clients
            if self.records().get(record["trial_id"], {}).get("status") == "completed":
                return False
            fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, line)
                if written != len(line):  # never for a regular file on Linux, but don't pretend
                    raise OSError(f"short write to {self.results_path}")
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        finally:
            os.close(lock)  # closing releases the lock
