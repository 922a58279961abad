"""Every row of docs/errors.md, run through the command line (in this process).

Each row: the exit code the catalogue says, exactly one `error:` line on stderr holding the
quoted text, no traceback (except with --debug, which must keep the code), no temp files,
and no file of an existing run changed (checksums before and after). One tiny run, trained
once for the module, is the "existing run" of every row.
"""
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import tiny_train_overrides, write_image_folder

CATALOGUE = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def catalogue_rows():
    rows = []
    for line in CATALOGUE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`") and cells[3].isdigit():
            rows.append((cells[0].strip("`"), cells[2].strip("`"), int(cells[3]), cells[4].strip("`")))
    return rows


ROWS = catalogue_rows()
# Rows the catalogue marks "(*in run*)" train until the error happens: the slow tier.
IN_RUN = {line.split("`")[1] for line in CATALOGUE.read_text().splitlines() if "(*in run*)" in line}


def checksums(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(finished_run):
    """The shared finished two-epoch run: the 'existing run' every row must leave alone."""
    return finished_run.run_dir, finished_run.images


def _mount(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True).returncode == 0


def _unmount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


class Row:
    """Paths a row's command and setup use."""

    def __init__(self, tmp: Path, run: Path, images: Path, monkeypatch):
        self.tmp, self.run, self.images, self.monkeypatch = tmp / "scratch", run, images, monkeypatch
        self.tmp.mkdir()
        self.new, self.copy, self.ro, self.full = tmp / "new", tmp / "copy", tmp / "ro", tmp / "full"
        self.mounts, self.locks = [], []

    def make_copy(self):
        shutil.copytree(self.run, self.copy)
        return self.copy / "checkpoints" / "last.ckpt"

    def read_only(self):
        """A read-only folder holding a copy of the run (a tmpfs remounted read-only)."""
        if not _mount(self.ro, "size=32m"):
            pytest.skip("needs root and tmpfs to make a read-only folder (permissions do not stop root)")
        self.mounts.append(self.ro)
        shutil.copytree(self.run, self.ro / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(self.ro)], check=True)

    def crash_in(self, method, error):
        from fmb.training.module import ImageClassifier

        def broken(self_, *args, **kwargs):
            raise error
        self.monkeypatch.setattr(ImageClassifier, method, broken)

    def format(self, text: str) -> str:
        tiny = " ".join(shlex.quote(o) for o in tiny_train_overrides(self.images, self.new))
        return text.format(tiny=tiny, run=self.run, copy=self.copy, new=self.new, tmp=self.tmp, ro=self.ro,
                           images=self.images, full=self.full, long="n" * 300)


def _hold_lock(row: Row, where: Path):
    from fmb.training.rundir import RunLock

    row.locks.append(RunLock(where).acquire())


class _Pickled:  # a class torch's safe loader refuses (loading it could run code)
    pass


def _break(path: Path, how: str, run: Path | None = None):
    data = (run or path).read_bytes() if how == "truncated" else None
    if how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(os.urandom(4096))
    elif how == "text":
        path.write_text("these are my notes, not a checkpoint\n")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])


def _setup(row_id: str, row: Row):
    """What a row needs before its command runs."""
    import datasets

    tmp = row.tmp
    if row_id == "config-malformed":
        (tmp / "bad.yaml").write_text("model:\n  variant: [efficientnetv2_s\n")
    elif row_id == "config-list":
        (tmp / "list.yaml").write_text("- a\n- b\n")
    elif row_id == "config-alias-bomb":  # 9**9 values once expanded; a few hundred bytes on disk
        lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
        (tmp / "bomb.yaml").write_text("\n".join(lines) + "\n")
    elif row_id == "config-too-big":
        (tmp / "big.yaml").write_text("# " + "x" * (2 << 20) + "\n")
    elif row_id == "config-env-lookup":
        (tmp / "env.yaml").write_text("run:\n  name: ${oc.env:HOME}\n")
    elif row_id == "pretrained-unsafe":
        torch.save({"state_dict": _Pickled()}, tmp / "object.pth")
    elif row_id == "predict-all-unreadable":
        (tmp / "bad.png").write_bytes(b"\x89PNG but not really")
    elif row_id == "export-exists":
        (tmp / "keep.onnx").write_bytes(b"an earlier export")
    elif row_id == "export-read-only":
        row.read_only()
    elif row_id == "source-empty-folder":
        (tmp / "empty").mkdir()
    elif row_id == "source-one-class":
        write_image_folder(tmp / "oneclass", classes=("cat",), per_class=6)
    elif row_id == "labels-one-class":
        from PIL import Image
        images = [Image.new("RGB", (12, 12), (i * 20, 0, 0)) for i in range(8)]
        datasets.Dataset.from_dict({"image": images, "label": [3] * 8},
                                   features=datasets.Features({"image": datasets.Image(),
                                                               "label": datasets.Value("int64")})
                                   ).to_parquet(str(tmp / "same.parquet"))
    elif row_id == "source-text-file":
        (tmp / "notes.txt").write_text("hello\n")
    elif row_id in ("hub-offline", "hub-unreachable"):
        if row_id == "hub-unreachable":
            row.monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
            row.monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
            row.monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
            row.monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    elif row_id == "image-truncated":
        folder = write_image_folder(tmp / "truncated")
        png = folder / "dog" / "3.png"
        png.write_bytes(png.read_bytes()[:40])
    elif row_id == "resume-no-checkpoint":
        (tmp / "dead").mkdir()
        (tmp / "dead" / "config.yaml").write_text("{}\n")
    elif row_id.startswith("resume-ckpt-"):
        last = row.make_copy()
        how = row_id.removeprefix("resume-ckpt-")
        if how in ("empty", "random", "text", "truncated"):
            _break(last, how)
        elif how == "no-lightning":
            state = torch.load(last, weights_only=True)
            torch.save({"state_dict": state["state_dict"]}, last)
        elif how == "other-model":
            state = torch.load(last, weights_only=True)
            key = next(k for k, v in state["state_dict"].items() if v.ndim == 4)
            state["state_dict"][key] = torch.zeros(5, 3, 3, 3)
            torch.save(state, last)
        elif how == "outside-run":
            shutil.copy(last, tmp / "loose.ckpt")
    elif row_id in ("run-dir-in-use", "resume-in-use"):
        row.make_copy()
        if row_id == "run-dir-in-use":
            for name in ("config.yaml", "summary.json"):
                (row.copy / name).unlink()
            shutil.rmtree(row.copy / "checkpoints")
        _hold_lock(row, row.copy)
    elif row_id in ("run-dir-is-file", "run-dir-under-file", "eval-json-under-file"):
        (tmp / "file").write_text("a file\n")
    elif row_id in ("run-dir-read-only", "resume-read-only", "eval-json-read-only"):
        row.read_only()
    elif row_id.startswith("eval-") and row_id in ("eval-empty", "eval-text", "eval-random", "eval-truncated"):
        name = {"eval-empty": "empty.ckpt", "eval-text": "notes.ckpt", "eval-random": "random.ckpt",
                "eval-truncated": "half.ckpt"}[row_id]
        (tmp / name).write_bytes(b"")
        _break(tmp / name, row_id.removeprefix("eval-").replace("empty", "empty"),
               run=row.run / "checkpoints" / "last.ckpt")
    elif row_id == "eval-foreign":
        torch.save({"conv.weight": torch.zeros(1)}, tmp / "weights.pth")
    elif row_id == "eval-pickled-object":
        torch.save({"state_dict": _Pickled()}, tmp / "object.ckpt")
    elif row_id == "eval-classes-differ":
        write_image_folder(tmp / "four", classes=("a", "b", "c", "d"), per_class=4)
    elif row_id == "crash":
        row.crash_in("training_step", RuntimeError("boom"))
    elif row_id == "resume-crash":
        row.make_copy()
        row.crash_in("training_step", RuntimeError("boom"))
    elif row_id == "out-of-memory":
        row.crash_in("training_step", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    elif row_id == "ctrl-c":
        row.crash_in("training_step", KeyboardInterrupt())
    elif row_id == "loss-nan":
        from fmb.training.module import ImageClassifier
        honest = ImageClassifier.loss
        row.monkeypatch.setattr(ImageClassifier, "loss", lambda self, a, b: honest(self, a, b) * float("nan"))
    elif row_id == "sigterm":
        from fmb.training.module import ImageClassifier
        honest = ImageClassifier.training_step

        def terminated(self, batch, batch_idx):
            if batch_idx == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # what SLURM sends; Lightning's handler catches it
            return honest(self, batch, batch_idx)
        row.monkeypatch.setattr(ImageClassifier, "training_step", terminated)
    elif row_id == "disk-full":
        if not _mount(row.full, "size=3m"):  # config and logs fit; a 6 MB checkpoint does not
            pytest.skip("needs root and tmpfs to make a small disk")
        row.mounts.append(row.full)


@pytest.mark.parametrize("row_id,command,code,says", [
    pytest.param(*r, id=r[0], marks=[pytest.mark.slow] if r[0] in IN_RUN else []) for r in ROWS])
def test_catalogue_row(row_id, command, code, says, finished, run_cli, tmp_path, monkeypatch):
    run, images = finished
    monkeypatch.delenv("FMB_DEBUG", raising=False)
    monkeypatch.setenv("FMB_RUN_DIR", "")
    row = Row(tmp_path, run, images, monkeypatch)
    try:
        _setup(row_id, row)
        watched = [run] + ([row.copy] if row.copy.exists() else [])
        before = {str(p): checksums(p) for p in watched}
        args = shlex.split(row.format(command))
        assert args[0] == "fmb"
        out = run_cli(*args[1:])
        after = {str(p): checksums(p) for p in watched}
        leftovers = list(tmp_path.rglob("*.tmp"))  # before a small disk goes away with its files
    finally:
        for lock in row.locks:
            lock.release()
        for mount in row.mounts:
            _unmount(mount)
    monkeypatch.delenv("FMB_DEBUG", raising=False)

    stderr = out.stderr
    assert out.returncode == code, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert row.format(says) in errors[0], stderr
    assert stderr.strip().splitlines()[-1] == errors[0], stderr  # the error is the last word
    if "--debug" in args:
        assert "Traceback" in stderr
    else:
        assert "Traceback" not in stderr
    if row_id == "resume-crash":  # the failed attempt's traceback is the one file it may add
        after[str(row.copy)].pop("error.log")
    assert before == after  # no file of an existing run changed
    assert not leftovers
    if code == 1 and row_id != "disk-full":
        target = row.copy if row_id.startswith("resume-") else row.new
        assert "Traceback" in (target / "error.log").read_text()


def test_catalogue_is_big_enough_and_ids_unique():
    ids = [r[0] for r in ROWS]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[a-z0-9-]+", i) for i in ids)
