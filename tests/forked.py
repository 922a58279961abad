"""`fmb` commands as separate processes that start in a fraction of a second.

Each one is a child of a multiprocessing forkserver that imported torch, Lightning, datasets and
fmb once per test process: its own pid, signals, exit code, files and locks, without the ~10 s a
fresh interpreter spends importing. Tests whose point is a fresh interpreter (the console script,
torchrun, Lightning's launcher re-running the command line, the installed wheel) start one instead,
and so do DDP ranks: Lightning reads a process's rank from its environment at import.

Environment variables are set in the child before the command runs; a library that read one at
import (the Hugging Face caches, offline mode) keeps the value the test process had.
"""
import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ["fmb.cli", "fmb.training.run", "lightning.pytorch", "datasets", "forked"]
_context = None
_started = []  # every Forked of this test process, for _kill_leftovers


@atexit.register
def _kill_leftovers():
    """A test that failed before it ended its process would otherwise hold up the test process's
    exit: multiprocessing waits for its children (runs before multiprocessing's own exit hook)."""
    for process in _started:
        process.kill()


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(args, env, cwd, stdout, stderr, new_session):
    if new_session:
        os.setsid()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    try:
        from fmb.cli import app

        sys.argv = ["fmb", *args]
        app(args, prog_name="fmb")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    atexit._run_exitfuncs()  # what an interpreter does on its way out; multiprocessing skips it
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(code)


class Forked:
    """The handful of `subprocess.Popen` methods the tests use, for a forkserver child."""

    def __init__(self, args, *, env=None, cwd=None, stdout=None, stderr=None, new_session=False):
        """stdout, stderr: a file to write (None: a temporary one, read by communicate())."""
        self.stdout_path, self.stderr_path = (Path(p) if p else _temporary() for p in (stdout, stderr))
        self._temporaries = [Path(p) for p, given in ((self.stdout_path, stdout), (self.stderr_path, stderr))
                             if not given]
        self._output = None
        self._process = _forkserver().Process(
            target=_child, args=([str(a) for a in args], dict(env or os.environ), str(cwd or os.getcwd()),
                                 str(self.stdout_path), str(self.stderr_path), new_session))
        self._process.start()
        self.pid = self._process.pid
        _started.append(self)

    @property
    def returncode(self):
        return self._process.exitcode

    def poll(self):
        return self._process.exitcode

    def wait(self, timeout=None):
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(["fmb"], timeout)
        return self._process.exitcode

    def send_signal(self, sig):
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self):
        """Ends it (a no-op once it ended) and reaps it, so the test process can exit."""
        if self._process.exitcode is None:
            self._process.kill()
        self._process.join()
        self._remove_temporaries()

    def communicate(self, timeout=None):
        """(stdout, stderr) as text, once it ended."""
        if self._output is None:
            self.wait(timeout)
            self._output = tuple(p.read_text(errors="replace") for p in (self.stdout_path, self.stderr_path))
            self._remove_temporaries()
        return self._output

    def _remove_temporaries(self):
        for path in self._temporaries:
            path.unlink(missing_ok=True)


def _temporary() -> Path:
    fd, path = tempfile.mkstemp(prefix="forked-", suffix=".log")
    os.close(fd)
    return Path(path)


def fmb(args, **kwargs) -> Forked:
    """`fmb ARGS` as a forked process (keyword arguments: see Forked)."""
    return Forked(args, **kwargs)
