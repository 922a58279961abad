"""fmb profile refuses a shape whose activations exceed free memory up front, with the
estimate and a size that fits, instead of growing until the kernel kills it."""
import re

from fmb.training.memory import available_bytes


def test_profile_shape_beyond_memory_is_one_line(run_cli):
    free = available_bytes("cpu") / 2**30
    for mode, step in (("both", "one training step"), ("infer", "one inference batch")):
        out = run_cli("profile", "-r", "2048", "-b", "4096", "--mode", mode, "--device", "cpu")
        assert out.returncode == 2, out.stderr
        line = " ".join(out.stderr.split())
        assert f"the activations of {step} at --resolution 2048 with --batch-size 4096 need about" in line
        need = float(re.search(r"need about ([\d,.]+) GiB", line).group(1).replace(",", ""))
        assert need > free and re.search(r"--resolution \d+ fits", line)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr and out.stdout == ""
