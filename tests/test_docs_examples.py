"""Every runnable example in README.md and docs/*.md runs, so an example that breaks fails CI.

The convention the pages follow:
- a ```bash block holds `fmb ...` commands, one per line (`\\` continues a line, `#` starts a
  comment). The commands of a block run in order, in this process, through the CLI app (the
  `run_cli` fixture), in one temporary directory (relative output paths land there, and a later
  command may read what an earlier one wrote); each must exit 0. `$RUN` stands for the
  directory of a finished run (`make train` prints one); here it is a copy, per block, of a
  tiny digits run made once per test session. Commands that train get tiny overrides appended
  (width/depth 0.25, 32 px, one epoch of two batches), profiles a tiny model and one timed
  iteration, ablations one profile iteration.
- a ```python block is executed; the blocks of one page share one namespace, in page order.
- anything else (```text, ```console, ```yaml, no language) is shown, not run: commands that
  need a GPU, a cluster, the network, or many minutes (`make train`, `sbatch`, torchrun).
"""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from conftest import built_once

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)

TINY_MODEL = ["model.width_mult=0.25", "model.depth_mult=0.25"]
TINY_FIT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false", "data.num_workers=0"]
TINY_DATA = ["data.image_size=32", "data.eval_image_size=32"]
TINY_PROFILE = ["--width-mult", "0.25", "--depth-mult", "0.25", "-r", "32", "-b", "2", "--warmup", "0", "--iters", "1"]
TINY_ABLATE = ["ablate.profile.warmup=0", "ablate.profile.iters=1", "ablate.profile.batch_size=2"]


def _blocks(page: Path, language: str):
    """(line number, text) of every fenced block of `language` on the page."""
    text = page.read_text()
    for match in FENCE.finditer(text):
        if match.group(1) == language:
            yield text.count("\n", 0, match.start()) + 2, match.group(2)


def _commands(block: str):
    """The block's commands: continuations joined, comments and blank lines dropped."""
    commands, pending = [], ""
    for offset, line in enumerate(block.splitlines()):
        if not pending:
            start = offset
        pending += " " + line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        words = shlex.split(pending, comments=True)
        if words:
            commands.append((start, words))
        pending = ""
    return commands


def _examples():
    for page in PAGES:
        for line, block in _blocks(page, "bash"):
            yield pytest.param([words for _, words in _commands(block)], id=f"{page.relative_to(REPO)}:{line}")


def _python_pages():
    return [pytest.param(page, id=str(page.relative_to(REPO))) for page in PAGES if any(_blocks(page, "python"))]


def test_pages_have_runnable_examples():
    """The convention is in use: README shows commands that run, and every bash line is an fmb command."""
    examples = list(_examples())
    assert any(param.id.startswith("README.md") for param in examples)
    for param in examples:
        for words in param.values[0]:
            assert words[0] == "fmb", (f"{param.id}: a ```bash block holds only `fmb ...` commands; "
                                       f"show other commands in a ```console block: {' '.join(words)}")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A finished tiny run of the front door (digits, EMA on), made small, once per test session."""
    def build(root):
        from fmb.config import load_config
        from fmb.training.run import train

        return train(load_config(["digits_v2s"], [*TINY_MODEL, *TINY_FIT, *TINY_DATA, f"run.dir={root / 'run'}"]))

    root, summary = built_once(tmp_path_factory, "docs_digits_run", build)
    assert summary["status"] == "completed"
    return root / "run"


def _tiny(words: list[str], run_dir: Path) -> list[str]:
    """The command as written, with what keeps it seconds long appended (later values win)."""
    command = words[1] if len(words) > 1 else ""
    if command == "train" and "--print-config" not in words and "--help" not in words:
        if "--resume" in words:  # the run's own model and data; one more short epoch
            return [*words, *TINY_FIT[1:], "trainer.max_epochs=2"]
        return [*words, *TINY_MODEL, *TINY_DATA, *TINY_FIT, f"run.dir={run_dir}"]
    if command == "profile" and "--help" not in words:
        return [*words, *TINY_PROFILE]
    if command == "ablate" and "--help" not in words:
        return [*words, *TINY_ABLATE]
    return words


@pytest.mark.parametrize("commands", list(_examples()))
def test_bash_block(commands, digits_run, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    run = shutil.copytree(digits_run, tmp_path / "run")  # commands that resume or export change it
    for index, words in enumerate(commands):
        words = [w.replace("$RUN", str(run)) for w in words]
        result = run_cli(*_tiny(words, tmp_path / f"new-run-{index}")[1:])
        assert result.returncode == 0, f"{' '.join(words)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("page", _python_pages())
def test_python_examples(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs_example__"}
    for line, block in _blocks(page, "python"):
        exec(compile("\n" * (line - 1) + block, str(page), "exec"), namespace)


@pytest.mark.subprocess
def test_package_level_inference_import():
    """`from fmb.inference import predict, export_model` (docs/python-api.md) gives the functions in a
    fresh interpreter, where no test has imported the submodules of the same names first."""
    import subprocess
    import sys

    code = "from fmb.inference import predict, export_model\nassert callable(predict) and callable(export_model)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
