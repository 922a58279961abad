"""What fmb ablate's report says: paired statistics with Student's t, sizes of the trained
models, context lines, readable plots, --dry-run, and the TensorBoard HParams view."""
import json

import pytest
import yaml

from fmb.ablation import run_ablation
from fmb.ablation.report import place_labels, summarize
from fmb.ablation.runner import trial_command
from fmb.ablation.stats import paired_difference, t_quantile
from fmb.ablation.study import load_study
from fmb.config import load_config, to_dict
from conftest import one_by_one
from test_ablate import _lines, _preset

# two-sided 95 % critical values of Student's t (any statistics table)
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 29: 2.045, 120: 1.980}


def test_t_quantiles_match_the_table_and_scipy():
    for df, value in T_TABLE.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=6e-4), df
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 10, 33, 500):
        for p in (0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9), (p, df)


def test_paired_difference_ci_and_verdict():
    base = {0: 90.0, 1: 92.0, 2: 91.0}
    better = {0: 91.0, 1: 93.5, 2: 92.2}   # +1.0, +1.5, +1.2: small spread, significant
    noisy = {0: 93.0, 1: 90.0, 2: 92.0}    # +3.0, -2.0, +1.0: the CI spans 0
    res = paired_difference(better, base)
    half = 4.303 * 0.2517 / 3 ** 0.5
    assert res["n_pairs"] == 3 and res["diff_mean"] == pytest.approx(1.2333, abs=1e-4)
    assert res["diff_ci_low"] == pytest.approx(1.2333 - half, abs=2e-3) and res["significant"] is True
    assert paired_difference(noisy, base)["significant"] is False
    one = paired_difference({0: 91.0, 5: 99.0}, {0: 90.0, 1: 80.0})  # only seed 0 is paired
    assert one["n_pairs"] == 1 and one["diff_mean"] == 1.0 and one["diff_ci_low"] is None


def test_rows_use_the_trained_models_sizes():
    recs = {f"{p}-s{s}": {"trial_id": f"{p}-s{s}", "placement": p, "seed": s, "status": "completed",
                          "val_top1": 0.9, "params": 5_000_000, "macs": 9e8, "trained_params": 113_465,
                          "trained_macs": 1_000_000, "trained_num_classes": 3}
            for p in ("MMM", "FMM") for s in (0, 1)}
    rows = summarize(["MMM", "FMM"], recs)
    assert rows[0]["params"] == 113_465 and rows[0]["macs"] == 1_000_000 and rows[0]["sizes_from"] == "trained"


def test_labels_of_crowded_points_do_not_overlap():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xy = [(1.0, 50.0), (1.01, 50.1), (1.02, 50.05), (1.0, 50.2), (3.0, 60.0), (3.0, 60.02), (1.5, 55.0)]
    ax.plot(*zip(*xy), "o")
    anns = place_labels(ax, xy, ["MMMMMM", "FMMMMM", "FFMMMM", "FFFMMM", "FFFFMM", "FFFFFM", "FFFFFF"])
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in anns]
    assert len(boxes) == 7
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(7) for j in range(i + 1, 7))
    plt.close(fig)


@pytest.mark.slow
def test_report_names_hardware_validation_and_differences_and_writes_hparams(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("FAKE_JITTER", "0.004")
    monkeypatch.setattr("fmb.profiling.profile_model", lambda spec, **kw: {
        "params": 1, "macs": 2, "flops": 4, "infer_images_per_sec": 9.0, "train_images_per_sec": 3.0})
    one_by_one(monkeypatch)
    preset, out = _preset(tmp_path, fused_overrides={"se_ratio": 0.0}), tmp_path / "study"
    result = run_ablation([preset], ["data.split_seed=7"], placements="MMMMMM,FFFMMM", seeds="0,1", out=out)
    study = load_study([preset], ["data.split_seed=7"], placements="MMMMMM,FFFMMM", seeds="0,1")
    assert result.exit_code == 0
    report = (out / "report.md").read_text()
    for text in ("data.split_seed=7", "the same images for every trial and seed", "run.seed varies initialisation",
                 "training budget per trial: max_epochs=1", "params and GMACs: the trained models (10 classes, "
                 "GMACs at 32 px)", "trials trained on: ", "img/s: profile on cpu", "fused stages: {'se_ratio': 0.0}",
                 "model.width_mult=0.25", "| FFFMMM | 1-3 | 0.000123 (×1.00) |", "[+", "Student's t"):
        assert text in report, text
    fused = next(r for r in result.rows if r["placement"] == "FFFMMM")
    assert f"{fused['diff_mean']:+.2f} [{fused['diff_ci_low']:+.2f}, {fused['diff_ci_high']:+.2f}] yes" in report
    # one validation set: every trial's config differs only in placement and seed, never in data
    data = set()
    for rec in _lines(out / "results.jsonl"):
        trial_dir = out / "trials" / rec["trial_id"]
        command = trial_command(study, trial_dir / "trial.yaml", rec["placement"], rec["seed"], trial_dir)
        cfg = load_config([command[command.index("-c") + 1]], [a for a in command if "=" in a])
        data.add(json.dumps(to_dict(cfg)["data"], sort_keys=True))
    assert len(data) == 1 and json.loads(data.pop())["split_seed"] == 7
    # the study as a TensorBoard HParams view: one run per trial with the placement and final metrics
    events = list((out / "tensorboard" / "FFFMMM-s1").glob("events.out.tfevents.*"))
    assert len(events) == 1
    blob = events[0].read_bytes()
    assert b"hparams" in blob and b"FFFMMM" in blob and b"hparams/val_top1" in blob


@pytest.mark.slow
def test_profile_only_report_has_no_training_budget(tmp_path):
    out = tmp_path / "study"
    run_ablation([_preset(tmp_path, fake=False)], placements="MMMMMM,FFFFFF", profile_only=True, out=out)
    report = (out / "report.md").read_text()
    assert "budget" not in report and "top-1" not in report and "seeds" not in report
    assert "| MMMMMM | none |" in report and "also params and GMACs" in report


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, run_cli):
    out = tmp_path / "study"
    res = run_cli("ablate", "-c", _preset(tmp_path), "--placements", "MMMMMM,FFFMMM", "--seeds", "0,1",
                  "--out", out, "--dry-run", "ablate.jobs=2")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    for part in ("trials: 4 (0 finished, 4 to run)", "2 at once", "trial MMMMMM-s0:", "model.blocks=MMMMMM",
                 "run.seed=0", "trial.yaml", "variant: efficientnetv2_b0", "quick profile, train img/s",
                 "estimate: 1 epoch(s) × 32 images"):
        assert part in text, part
    assert not out.exists()
    trial_cfg = text.split("its -c file (trial.yaml):")[1].split("quick profile")[0]
    assert yaml.safe_load("\n".join(ln[2:] for ln in trial_cfg.splitlines()))["model"]["width_mult"] == 0.25
