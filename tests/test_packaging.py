"""What ships and what a user sees first: configs inside the package (and the wheel), presets by
name from any directory, `fmb configs`, `fmb train --help` with every key's doc,
`--print-config` with comments, completion without slowing `fmb --help`, the digits set
without scikit-learn, and the README's plain-Lightning example."""
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from fmb.config import CONFIG_DIR, from_dict, load_config

REPO = Path(__file__).resolve().parent.parent


def test_configs_live_in_the_package_and_load_by_name_anywhere(tmp_path, monkeypatch):
    assert CONFIG_DIR == REPO / "fmb" / "configs" and (CONFIG_DIR / "experiment" / "digits_v2s.yaml").is_file()
    monkeypatch.chdir(tmp_path)
    assert load_config(["cifar10_v2s"]) == load_config([str(CONFIG_DIR / "experiment" / "cifar10_v2s.yaml")])
    assert load_config(["configs/experiment/digits_v2s.yaml"]) == load_config([], front_door=True)


def test_fmb_configs_lists_presets(run_cli):
    result = run_cli("configs")
    assert result.returncode == 0
    for name in ("digits_v2s", "cifar10_v2s", "imagenet_v2s_paper", "cifar10", "digits_quick"):
        assert name in result.stdout


def test_train_help_lists_sections_and_keys_with_docs(run_cli):
    result = run_cli("train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for key in ("model.blocks", "data.source", "optim.lr", "sched.warmup_epochs", "ema.decay", "run.loggers",
                "trainer.*", "progressive.stages"):
        assert key in text, key
    assert "placement, one letter per stage" in text and "--print-config" in text


def test_print_config_carries_docs_as_comments_and_loads_back(run_cli, tmp_path):
    result = run_cli("train", "--print-config", "model.variant=efficientnetv2_m", "run.loggers=[csv,wandb]")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "  variant: efficientnetv2_m" in text and "# model name, see `fmb models`" in text
    assert not [line for line in text.splitlines() if line != line.rstrip()]  # no padding
    cfg = load_config([], ["model.variant=efficientnetv2_m", "run.loggers=[csv,wandb]"], front_door=True)
    assert from_dict(yaml.safe_load(text)) == cfg
    saved = tmp_path / "mine.yaml"
    saved.write_text(text)
    assert load_config([str(saved)]) == cfg


@pytest.mark.subprocess
def test_completion_on_and_help_imports_no_torch(run_cli):
    assert "--install-completion" in run_cli("--help").stdout
    code = ("import sys\nfrom fmb.cli import app\n"
            "for args in (['--help'], ['train', '--help']):\n"
            "    try:\n        app(args, prog_name='fmb')\n    except SystemExit:\n        pass\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "TORCH False" in out.stdout, out.stderr[-2000:]


def test_digits_without_scikit_learn(tmp_path, monkeypatch):
    from fmb.data.sources import digits_dataset

    with monkeypatch.context() as blocked:
        for name in ["sklearn", *(m for m in sys.modules if m.startswith("sklearn."))]:
            blocked.setitem(sys.modules, name, None)  # any import of scikit-learn now fails, loaded or not
        ds = digits_dataset(tmp_path / "without")
        assert (len(ds), ds.features["label"].names[:3], ds[0]["image"].size) == (1797, ["0", "1", "2"], (8, 8))
    sklearn = pytest.importorskip("sklearn.datasets")
    import numpy as np

    ds = digits_dataset(tmp_path)
    reference = sklearn.load_digits()
    pixels = np.stack([np.asarray(ds[i]["image"]) for i in (0, 500, 1796)])
    expected = np.round(reference.images[[0, 500, 1796]] * (255 / 16)).astype(np.uint8)
    assert (pixels == expected).all() and ds["label"] == reference.target.tolist()


@pytest.mark.slow
def test_readme_plain_lightning_example(tmp_path, monkeypatch):
    """The README's "Python use" example runs as written: fmb's model and datamodule in a plain
    lightning.Trainer, then Trainer.predict."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python use", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "L.Trainer" in b]
    assert blocks, "README's Python use section lost its Trainer example"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    probs = namespace["probs"]
    assert probs.shape[1] == 10 and float(probs.sum(-1).mean()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.subprocess
@pytest.mark.slow
def test_wheel_installs_and_runs_from_any_directory(tmp_path):
    """Build the wheel, install it (no deps) into a fresh venv that borrows this environment's
    packages, and run the front door from a directory with no configs/ in sight."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, timeout=600, capture_output=True)
    wheel = next(dist.glob("fmb-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "fmb/configs/experiment/digits_v2s.yaml" in names and "fmb/configs/data/cifar10.yaml" in names
    assert "fmb/data/digits.npz" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (and pip) come from this environment, after the venv's own packages.
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, timeout=300, capture_output=True)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "FMB_CACHE": str(tmp_path / "cache"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)

    def fmb(*args):
        return subprocess.run([str(venv / "bin" / "fmb"), *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)

    where = subprocess.run([str(python), "-c", "import fmb; print(fmb.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True).stdout
    assert where.startswith(site), where
    run = fmb("train", "model.width_mult=0.25", "model.depth_mult=0.25", "trainer.max_epochs=1",
              "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "data.num_workers=0",
              "trainer.enable_progress_bar=false", "run.dir=run")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert (work / "run" / "checkpoints" / "last.ckpt").is_file()
    cfg = yaml.safe_load((work / "run" / "config.yaml").read_text())
    # the front door, found in the installed package: its recipe, not the ImageNet defaults
    assert cfg["optim"]["name"] == "adamw" and cfg["ema"]["decay"] == 0.99 and cfg["data"]["crop_scale_min"] == 0.85
    listed = fmb("configs")
    assert listed.returncode == 0 and "digits_quick" in listed.stdout
