"""Config values that would write outside runs/, hang the loader or leak the environment are
refused while the config loads, in one line: run.name/run.dir/run.seed, trainer counts below
1, a section set to one value, YAML alias bombs and oversized files, ${oc.env:...}."""
import pytest

from fmb.config import load_config
from fmb.config.checks import MAX_CONFIG_BYTES
from fmb.errors import FmbError


@pytest.mark.parametrize("name", ["../../../escape", "/etc/x", "a/b", "..", ".", "back\\slash"])
def test_run_name_that_leaves_runs_is_refused(name):
    with pytest.raises(FmbError, match="invalid run.name=.*expected one folder name under runs/") as info:
        load_config([], [f"run.name={name}"])
    assert info.value.exit_code == 2


def test_run_name_and_dir_lengths():
    with pytest.raises(FmbError, match="invalid run.name: 300 bytes long; expected at most 200"):
        load_config([], ["run.name=" + "n" * 300])
    with pytest.raises(FmbError, match="invalid run.dir: a folder name of 300 bytes"):
        load_config([], ["run.dir=/tmp/" + "d" * 300 + "/run"])
    assert load_config([], ["run.name=" + "n" * 200, "run.dir=runs/ok"]).run.name == "n" * 200


@pytest.mark.parametrize("seed,ok", [(-1, False), (2**32, False), (0, True), (2**32 - 1, True)])
def test_seed_range(seed, ok):
    if ok:
        assert load_config([], [f"run.seed={seed}"]).run.seed == seed
    else:
        with pytest.raises(FmbError, match=f"invalid run.seed={seed}; expected a whole number from 0 to"):
            load_config([], [f"run.seed={seed}"])


@pytest.mark.parametrize("key", ["accumulate_grad_batches", "log_every_n_steps", "check_val_every_n_epoch"])
def test_trainer_counts_below_one(key):
    with pytest.raises(FmbError, match=f"invalid trainer.{key}=0; expected an integer >= 1"):
        load_config([], [f"trainer.{key}=0"])


@pytest.mark.parametrize("section", ["model", "run", "trainer", "optim"])
def test_section_set_to_one_value(section):
    with pytest.raises(FmbError, match=f"override {section}=5 sets a whole section to one value; expected "
                                       f"{section}.KEY=VALUE"):
        load_config([], [f"{section}=5"])


def test_env_lookup_refused_in_files_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("FMB_TEST_SECRET", "hunter2")
    preset = tmp_path / "secret.yaml"
    preset.write_text("run:\n  mlflow_tracking_uri: http://user:${oc.env:FMB_TEST_SECRET}@host\n")
    with pytest.raises(FmbError, match=r"run.mlflow_tracking_uri in .*secret.yaml reads an environment variable") as info:
        load_config([preset])
    assert "hunter2" not in str(info.value)
    with pytest.raises(FmbError, match="run.name in override .* reads an environment variable"):
        load_config([], ["run.name=${oc.env:FMB_TEST_SECRET}"])
    with pytest.raises(FmbError, match="reads an environment variable"):
        load_config([], ["run.loggers=[csv, '${ env:FMB_TEST_SECRET}']"])
    # interpolation of another key is not an environment look-up
    other = tmp_path / "other.yaml"
    other.write_text("run:\n  name: ${model.variant}\n")
    assert load_config([other]).run.name == "efficientnetv2_s"


def _bomb(levels: int) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_recursive_alias_and_size_refused_before_expansion(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb(9))  # 9**9 values once expanded: OmegaConf would copy them all
    with pytest.raises(FmbError, match="expands to more than 100,000 values through its aliases"):
        load_config([bomb])
    loop = tmp_path / "loop.yaml"
    loop.write_text("a: &a [*a]\n")
    with pytest.raises(FmbError, match="alias inside its own anchor"):
        load_config([loop])
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(FmbError, match="is 1.0 MiB; expected a YAML config of at most 1 MiB"):
        load_config([big])
    shared = tmp_path / "shared.yaml"  # anchors used as intended still load
    shared.write_text("model: {variant: efficientnetv2_b0, stage_overrides: {1: &k {kernel_size: 5}, 2: *k}}\n")
    assert load_config([shared]).model.stage_overrides[2] == {"kernel_size": 5}


def test_alias_bomb_in_one_override_is_refused():
    levels = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 8)]
    with pytest.raises(FmbError, match=r"override 'run.loggers=...' expands to more than 100,000 values"):
        load_config([], ["run.loggers=[" + ", ".join(levels) + "]"])


def test_interpolation_of_a_key_set_elsewhere(tmp_path):
    """${model.variant} in a file or an override names a key of the merged config, not of the
    file alone."""
    other = tmp_path / "other.yaml"
    other.write_text("run:\n  name: ${model.variant}-run\n")
    assert load_config([other], ["model.variant=efficientnetv2_b0"]).run.name == "efficientnetv2_b0-run"
    assert load_config([], ["run.name=${model.variant}"]).run.name == "efficientnetv2_s"


def test_the_trainer_keys_checked_without_lightning_are_lightnings():
    from fmb.config.trainer import KNOWN, trainer_arguments

    assert KNOWN <= set(trainer_arguments())


@pytest.mark.subprocess
def test_a_config_loads_without_torch_or_lightning():
    """`fmb ablate` plans and `--print-config` prints from the config alone: loading one (variant,
    placement and trainer keys checked) imports neither torch nor Lightning."""
    import subprocess
    import sys

    code = ("import sys\nfrom fmb.config import load_config\n"
            "load_config([], ['model.blocks=FFMMMM', 'trainer.max_epochs=3', 'trainer.accelerator=cpu'])\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'lightning', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
