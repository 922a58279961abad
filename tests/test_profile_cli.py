"""`fmb profile`: tables, JSON and plot through the command line (in this process) for a good
and a bad run, and every bad input as one FmbError before any work."""
import json
import sys

import pytest
import torch
from rich.console import Console

from fmb.errors import FmbError
from fmb.profiling.report import run_profile

TINY = ["--width-mult", "0.25", "--depth-mult", "0.25", "--num-classes", "10", "--warmup", "0", "--iters", "1"]
CLI_DEFAULTS = {"variant": "efficientnetv2_s", "blocks": None, "sets": None, "width_mult": 0.25, "depth_mult": 0.25,
                "num_classes": 10, "resolution": 32, "batch_size": 32, "mode": "both", "device": "cpu",
                "precision": "fp32", "channels_last": False, "compile": False, "fast": False,
                "compare_blocks": False, "warmup": 0, "iters": 1, "json_path": None, "plot_path": None}


@pytest.mark.slow
def test_profile_writes_tables_json_and_plot(run_cli, tmp_path):
    out, png = tmp_path / "profile.json", tmp_path / "stages.png"
    result = run_cli("profile", *TINY, "-r", "32", "-b", "2", "--mode", "infer", "--compare-blocks",
                     "--set", "stage.4.kernel_size=5", "--json", str(out), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    assert "per stage" in result.stdout and "verdict" in result.stdout and "[1 run]" in result.stdout
    data = json.loads(out.read_text())
    assert data["model"]["stage_overrides"] == {"4": {"kernel_size": 5}}
    assert len(data["compare_blocks"]) == 6 and len(data["stages"]) == 8
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_one_red_line_and_exit_2(run_cli):
    result = run_cli("profile", *TINY, "-r", "32", "--iters", "0")
    assert result.returncode == 2, result.stderr
    assert "invalid iters 0" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


BAD = {
    "resolution": ({"resolution": 16}, "total stride is 32"),
    "batch": ({"batch_size": 0}, "batch size"),
    "iters": ({"iters": 0}, "expected an integer >= 1"),
    "warmup": ({"warmup": -1}, "expected an integer >= 0"),
    "fp16 on cpu": ({"precision": "fp16"}, "fp16 on CPU"),
    "stage": ({"sets": ["stage.9.kernel_size=5"]}, "stages 1..6"),
    "field": ({"sets": ["stage.4.kernal_size=5"]}, "did you mean 'kernel_size'"),
    "set syntax": ({"sets": ["kernel_size=5"]}, "expected stage.N.field=value"),
}
if not torch.cuda.is_available():
    BAD["cuda"] = ({"device": "cuda"}, "no CUDA GPU")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_fmb_error_before_any_work(case, tmp_path):
    changes, message = BAD[case]
    out = tmp_path / "profile.json"
    with pytest.raises(FmbError, match=message) as info:
        run_profile(**{**CLI_DEFAULTS, **changes, "json_path": out}, console=Console(file=sys.stderr))
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    assert not out.exists()
