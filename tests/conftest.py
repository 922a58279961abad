import os

# Tests never touch the network: the hub is unreachable here and in CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Test processes side by side (make test's -n): one thread each, inherited by the runs and
    # subprocesses they start (auto keeps OMP_NUM_THREADS), or they oversubscribe the cores and
    # every op waits on the other process's threads.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    """Torch's thread count for a process that runs tests. pytest-xdist's controller runs none, and
    it starts the workers only after this file is loaded: importing torch here (seconds) would
    hold back every worker."""
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        return
    import torch

    omp = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1, int(omp) if omp.isdigit() else 2)))


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped on a machine without a CUDA GPU (`pytest -m gpu` selects them).
    Side by side (pytest-xdist), the long tests go first on every worker."""
    import torch

    if not torch.cuda.is_available():
        no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(no_gpu)
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        items[:] = long_tests_first(items, workers)


def long_tests_first(items, workers):
    """The order for `--dist worksteal`, which hands worker k the k-th contiguous share of the list
    and later moves tests from the end of a busy worker's share to an idle one: each share starts
    with its part of the fresh-process tests, then the slow ones, then the quick ones, so the run
    ends with quick tests that even out, not one worker still in a half-minute test. The order is
    the same on every worker (xdist checks that)."""
    def weight(item):
        marks = {m.name for m in item.iter_markers()}
        return 0 if marks & {"subprocess", "ddp"} else 1 if "slow" in marks else 2

    # worksteal's first handout gives worker k `len(pending) // (workers - k)` of what is left, so
    # the last shares are the longer ones: dealing the ranked list from the last share backwards
    # gives each share exactly that many tests
    ranked = sorted(items, key=weight)  # stable: collection order within a weight
    return [item for k in range(workers) for item in ranked[workers - 1 - k::workers]]


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """A run sets the process's torch threads (auto: every core where OMP_NUM_THREADS is unset);
    the next test in this process starts from the count it had, or its float sums would differ."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


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
def fixed_profile(monkeypatch):
    """fmb ablate's profiler replaced by fixed numbers (a function of the placement), for sweep tests
    that check the sweep, not the measurement, and so two runs' reports compare byte for byte.
    The real profiler inside a sweep is tested in test_ablate.py's profile-only and real sweeps."""
    def profile_model(spec, **kw):
        fused = spec["blocks"].count("F")
        return {"params": 1000 + fused, "macs": 10_000 + 100 * fused, "flops": 20_000 + 200 * fused,
                "infer_images_per_sec": 500.0 + fused, "train_images_per_sec": 100.0 + fused}
    monkeypatch.setattr("fmb.profiling.profile_model", profile_model)
    one_by_one(monkeypatch)


def one_by_one(monkeypatch):
    """A study's placements profiled one at a time through fmb.profiling.profile_model (which a
    test replaces), instead of measured together: for tests of the sweep, not the measurement."""
    from fmb.ablation.runner import profile_safely

    monkeypatch.setattr("fmb.ablation.local.profile_placements",
                        lambda study, placements: {p: profile_safely(study, p) for p in placements})


@pytest.fixture
def run_cli(capsys):
    """Run the `fmb` app in this process, as the console script would: .returncode, .stdout, .stderr
    (what this command printed, not what the test printed before it)."""
    from types import SimpleNamespace

    from fmb.cli import app

    def run(*args):
        capsys.readouterr()
        try:
            app([str(a) for a in args], prog_name="fmb")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


def built_once(tmp_path_factory, name, build):
    """`build(folder)` for the whole test session, however many pytest-xdist workers ask: the first
    builds it under a file lock in the session's own temp folder, the others wait and read what it
    returned (kept as JSON). The folder is then shared, so tests only read it (or copy it)."""
    import json
    import shutil

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # above each worker's folder: one per session
    folder, returned = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not returned.exists():
            shutil.rmtree(folder, ignore_errors=True)  # left by a build that failed
            folder.mkdir()
            returned.write_text(json.dumps(build(folder)))
    return folder, json.loads(returned.read_text())


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One tiny two-epoch EMA run on a 3-class folder, trained once for the whole test session and
    shared by every test that only reads a finished run: .summary (what train() returned),
    .run_dir, .checkpoint (last.ckpt), .images. A test that changes a run works on a copy
    (`copy_run`); tests that check a command leaves a run alone may point it at this one."""
    from types import SimpleNamespace

    def build(root):
        from fmb.config import load_config
        from fmb.training.run import train

        images = write_image_folder(root / "images")
        return train(load_config([], tiny_train_overrides(images, root / "run", **{"trainer.max_epochs": 2})))

    root, summary = built_once(tmp_path_factory, "finished_run", build)
    assert summary["status"] == "completed" and summary["epochs"] == 2
    run_dir = root / "run"
    return SimpleNamespace(summary=summary, run_dir=run_dir, checkpoint=run_dir / "checkpoints" / "last.ckpt",
                           images=root / "images")


def copy_run(run_dir, dest):
    """A copy of a finished run's directory for a test that resumes, breaks or locks it."""
    import shutil

    shutil.copytree(run_dir, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_checkpoint(finished_run):
    """(last.ckpt, run dir, image folder) of the shared finished run, for the predict, export and
    eval tests that only read it."""
    return finished_run.checkpoint, finished_run.run_dir, finished_run.images


@pytest.fixture(scope="session")
def exported(tiny_checkpoint, tmp_path_factory):
    """The shared run exported once per format with fmb export's defaults (ONNX, .pt2,
    safetensors), for the tests that read an export: {format: (path, export_model's result)}.
    The tests of export's own options write their files themselves."""
    def build(root):
        from fmb.inference.export import export_model

        return {fmt: export_model(tiny_checkpoint[0], format=fmt, output=root / f"m.{fmt}")
                for fmt in ("onnx", "pt2", "safetensors")}

    root, results = built_once(tmp_path_factory, "exported", build)
    return {fmt: (root / f"m.{fmt}", result) for fmt, result in results.items()}


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """An empty Hub cache (offline) and torch.hub cache, both in tmp_path."""
    import huggingface_hub.constants

    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return hub, tmp_path / "torch"
