"""`fmb profile` through `python -m fmb`: tables, JSON, plot, and one-line errors for bad input."""
import json
import subprocess
import sys

import pytest
import torch

TINY = ["--width-mult", "0.25", "--depth-mult", "0.25", "--num-classes", "10", "--warmup", "1", "--iters", "2"]


def run_fmb(*args):
    return subprocess.run([sys.executable, "-m", "fmb", "profile", *args], capture_output=True, text=True)


def test_profile_writes_tables_json_and_plot(tmp_path):
    out, png = tmp_path / "profile.json", tmp_path / "stages.png"
    result = run_fmb(*TINY, "-r", "32", "-b", "2", "--mode", "infer", "--compare-blocks", "--set", "stage.4.kernel_size=5",
                     "--json", str(out), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    assert "per stage" in result.stdout and "verdict" in result.stdout
    data = json.loads(out.read_text())
    assert data["model"]["stage_overrides"] == {"4": {"kernel_size": 5}}
    assert len(data["compare_blocks"]) == 6 and len(data["stages"]) == 8
    assert png.read_bytes()[:4] == b"\x89PNG"


BAD = {
    "resolution": (["-r", "16"], "total stride is 32"),
    "batch": (["-r", "32", "-b", "0"], "batch size"),
    "fp16 on cpu": (["-r", "32", "--precision", "fp16"], "fp16 on CPU"),
    "stage": (["-r", "32", "--set", "stage.9.kernel_size=5"], "stages 1..6"),
    "field": (["-r", "32", "--set", "stage.4.kernal_size=5"], "did you mean 'kernel_size'"),
}
if not torch.cuda.is_available():
    BAD["cuda"] = (["-r", "32", "--device", "cuda"], "no CUDA GPU")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_red_line_and_exit_2(case):
    args, message = BAD[case]
    result = run_fmb(*TINY, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
