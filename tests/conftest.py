import os

import pytest
import torch

# Tests never touch the network: the hub is unreachable here and in CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny():
    """Keyword arguments for the tiny models every test uses (width/depth 0.25)."""
    return {"width_mult": 0.25, "depth_mult": 0.25}


def write_image_folder(root, classes=("cat", "dog", "owl"), per_class=12, size=12, seed=0):
    """A class-per-subfolder image set whose classes are easy to tell apart (by colour)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            pixels[..., index % 3] += 180
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "images")


def tiny_train_overrides(source, run_dir, **extra):
    """Dotted overrides for a seconds-long CPU run of a tiny V2-S."""
    values = {
        "data.source": str(source), "data.image_size": 32, "data.eval_image_size": 32, "data.batch_size": 8,
        "data.num_workers": 0, "data.val_fraction": 0.25, "model.width_mult": 0.25, "model.depth_mult": 0.25,
        "trainer.max_epochs": 1, "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False,
        "trainer.log_every_n_steps": 1, "run.dir": str(run_dir),
        # the front door's recipe (configs/experiment/digits_v2s.yaml), not the ImageNet defaults
        "optim.name": "adamw", "optim.lr": 0.002, "optim.lr_per_256": False, "sched.name": "cosine",
        "sched.warmup_epochs": 1, "ema.enabled": True, "ema.decay": 0.99,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def run_cli(capsys):
    """Run the `fmb` app in this process, as the console script would: .returncode, .stdout, .stderr."""
    from types import SimpleNamespace

    from fmb.cli import app

    def run(*args):
        try:
            app([str(a) for a in args], prog_name="fmb")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(last.ckpt, run dir, image folder) of one tiny EMA run on a 3-class folder, shared by the
    predict, export and eval tests that only read it."""
    from fmb.config import load_config
    from fmb.training.run import train

    root = tmp_path_factory.mktemp("tiny_checkpoint")
    images, run_dir = write_image_folder(root / "images"), root / "run"
    summary = train(load_config([], tiny_train_overrides(images, run_dir, **{"trainer.max_epochs": 2})))
    assert summary["status"] == "completed"
    return run_dir / "checkpoints" / "last.ckpt", run_dir, images
