"""Config loading: files merge in order, dotted overrides, and every mistake as one line."""
import subprocess
import sys

import pytest

from fmb.config import load_config
from fmb.errors import FmbError


def test_files_merge_in_order_then_overrides(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("model:\n  variant: efficientnetv2_b0\ndata:\n  batch_size: 16\n")
    b = tmp_path / "b.yaml"
    b.write_text("data:\n  batch_size: 8\n")
    cfg = load_config([a, b], ["optim.lr=0.5", "model.stage_overrides.4.kernel_size=5"])
    assert cfg.model.variant == "efficientnetv2_b0" and cfg.data.batch_size == 8 and cfg.optim.lr == 0.5
    assert dict(cfg.model.stage_overrides[4]) == {"kernel_size": 5}  # same key as YAML {4: ...}
    assert cfg.data.source == "digits" and cfg.optim.name == "rmsprop"  # the schema's defaults


def test_a_config_as_plain_data_is_omegaconfs_conversion_and_each_load_starts_from_the_defaults():
    """to_dict (checkpoints, config.yaml, reports) gives what OmegaConf's own conversion gives: lists
    where code set tuples, int stage keys. A load never sees what an earlier one set."""
    from omegaconf import OmegaConf

    from fmb.config import schema, to_dict

    cfg = load_config(["digits_v2s"], ["model.stage_overrides.4.se_ratio=0.0", "trainer.devices=2"])
    cfg.data.std = (0.2, 0.3, 0.4)  # as code may set it
    plain = to_dict(cfg)
    assert plain == OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert plain["data"]["std"] == [0.2, 0.3, 0.4] and plain["model"]["stage_overrides"] == {4: {"se_ratio": 0.0}}
    schema().model.variant = "efficientnet_b7"
    assert load_config([], []).model.variant == schema().model.variant == "efficientnetv2_s"
    assert load_config([], []).trainer["devices"] == 1 and load_config([], []).model.stage_overrides == {}


@pytest.mark.parametrize("overrides, message", [
    (["model.varient=efficientnetv2_m"], "unknown config key 'model.varient'.*did you mean 'model.variant'"),
    (["data.batch_size=lots"], "wrong type for 'data.batch_size'"),
    (["trainer.max_epoch=3"], "did you mean 'max_epochs'"),
    (["optim.name=adamx"], "did you mean 'adamw'"),
    (["model.blocks=FFMM"], "expected 6 letters"),
    (["trainer.strategy=dpp"], "unknown trainer.strategy"),
    (["data.val_fraction=1.5"], r"\(0, 1\)"),
    (["trainer.logger=false"], "set by fmb"),
    (["nonsense"], "expected key=value"),
    (["optim.lr=nan"], "optim.lr=nan"),
    (["aug.mixup_alpha=inf"], "aug.mixup_alpha=inf"),
    (["trainer.max_epochs=0"], "at least 1 epoch"),
    (["data.image_size=100000"], "16 to 2048 px"),
    (["model.blocks="], "has no value"),
    (["model.blocks=' '"], "expected a placement"),
    (["data.on_bad_image=ignore"], "expected one of error, skip"),
    (["data=cifar11"], "did you mean 'cifar10'"),
    (["ema.decay=1.0"], r"\(0, 1\)"),
    (["trainer.max_epochs=abc"], "expected an integer number of epochs"),
    (["trainer.max_epochs=1.5"], "expected an integer number of epochs"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(FmbError, match=message) as info:
        load_config([], overrides)
    assert "\n" not in str(info.value)


def test_malformed_yaml_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  variant: efficientnetv2_s\n  blocks: [FFF\n")
    with pytest.raises(FmbError, match=r"malformed YAML in .*bad.yaml at line \d+, column \d+"):
        load_config([bad])


def test_unreadable_config_files(tmp_path):
    (tmp_path / "scalar.yaml").write_text("model: 3\n")
    with pytest.raises(FmbError, match="wrong type .*mapping"):
        load_config([tmp_path / "scalar.yaml"])
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(FmbError, match="not UTF-8"):
        load_config([tmp_path / "binary.yaml"])
    with pytest.raises(FmbError, match="is a directory"):
        load_config([tmp_path])


def test_missing_config_file_suggests_nearest(tmp_path):
    (tmp_path / "digits_v2s.yaml").write_text("{}\n")
    with pytest.raises(FmbError, match="config file not found.*did you mean 'digits_v2s.yaml'"):
        load_config([tmp_path / "digit_v2s.yaml"])


def test_every_shipped_config_loads():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "configs"
    for path in sorted((root / "experiment").glob("*.yaml")) + sorted((root / "data").glob("*.yaml")):
        load_config([path])


def test_front_door_is_the_digits_experiment():
    cfg = load_config([], front_door=True)
    assert cfg.data.source == "digits" and cfg.data.hflip is False and cfg.optim.name == "adamw"
    assert cfg == load_config(["configs/experiment/digits_v2s.yaml"]) == load_config(["digits_v2s"])
    assert load_config([]).data.hflip is True  # without the front door: neutral defaults


def test_data_group_replaces_the_whole_section():
    cfg = load_config(["cifar10_v2s"], ["data=digits"])
    assert cfg.data.source == "digits" and cfg.data.hflip is False and cfg.data.num_workers == "auto"
    assert cfg.optim.name == "sgd" and cfg.progressive.enabled  # the experiment's other sections stay
    # columns are detected, so switching the source alone needs no resets either
    assert load_config(["cifar10_v2s"], ["data.source=digits"]).data.image_column is None


def test_keys_of_older_configs_move_to_their_new_section(tmp_path):
    old = tmp_path / "config.yaml"
    old.write_text("aug:\n  hflip: false\n  crop_scale_min: 0.7\n  label_smoothing: 0.2\n")
    cfg = load_config([old])
    assert (cfg.data.hflip, cfg.data.crop_scale_min, cfg.aug.label_smoothing) == (False, 0.7, 0.2)


def test_cli_errors_exit_2_in_one_line(run_cli):
    ok = run_cli("train", "--print-config", "model.variant=efficientnetv2_m")
    assert ok.returncode == 0 and "efficientnetv2_m" in ok.stdout
    bad = run_cli("train", "model.varient=x")
    assert bad.returncode == 2 and "did you mean 'model.variant'" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.subprocess
def test_cli_subprocess_smoke():
    """One real process: the console entry point, its exit code and its one-line error."""
    bad = subprocess.run([sys.executable, "-m", "fmb", "train", "model.varient=x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'model.variant'" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
