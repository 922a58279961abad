"""`fmb models` through the command line (in this process; tests/test_training_config.py starts
the console entry point in a fresh interpreter): table, JSON, and one-line errors."""
import json

import pytest


@pytest.mark.slow
def test_models_table_and_json(run_cli, tmp_path):
    out = tmp_path / "models.json"
    result = run_cli("models", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "efficientnetv2_s" in result.stdout and "21,458,488" in result.stdout
    rows = {r["name"]: r for r in json.loads(out.read_text())["models"]}
    assert len(rows) == 16
    assert rows["efficientnetv2_s"]["placement"] == "FFFMMM" and rows["efficientnetv2_s"]["eval_size"] == 384
    assert 8.0 < rows["efficientnetv2_s"]["gmacs"] < 9.0
    assert rows["efficientnet_b0"]["params"] == 5_288_548


def test_unknown_variant_is_one_line_exit_2(run_cli):
    result = run_cli("models", "--variant", "efficientnetv2_q")
    assert result.returncode == 2
    assert "did you mean 'efficientnetv2_s'" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback(run_cli):
    result = run_cli("--debug", "models", "--variant", "nope")
    assert result.returncode != 0 and "Traceback" in result.stderr
