"""Placement search: exact params/MACs of every placement from the parts, Pareto logic on
synthetic numbers, the command's outputs, `pareto:K` in a study, and profile timings that do
not depend on the order of the placements. No speed is asserted against a clock: the one
timing test compares ratios measured in the same process."""
import csv
import io
import json

import pytest
import torch
import yaml

from fmb import create_model
from fmb.ablation.plan import pareto_count, trial_stage_overrides
from fmb.errors import FmbError
from fmb.profiling import pareto
from fmb.profiling.cost_model import part_contenders
from fmb.profiling.measure import count_macs, count_params
from fmb.profiling.search import all_placements, anchors

TINY = {"name": "efficientnetv2_b0", "width_mult": 0.25, "depth_mult": 0.25, "num_classes": 10}
RES = 32


@pytest.fixture(autouse=True)
def one_thread():
    """One thread while these tests time anything: on a shared machine two threads that wait
    for each other at every op make tiny steps both slow and erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sum_rows(rows: dict, placement: str, key: str) -> int:
    return rows["stem"][key] + rows["head"][key] + sum(rows[f"{i + 1}{c}"][key] for i, c in enumerate(placement))


@pytest.mark.parametrize("overrides_for, placements", [
    pytest.param(lambda p: None, all_placements(6), marks=pytest.mark.slow),  # all 64: seconds of FLOP counting
    # per block type, as a study's fused_overrides / mbconv_overrides, under a per-stage override
    (lambda p: trial_stage_overrides(p, {4: {"kernel_size": 5}}, {"se_ratio": 0.0}, {"expand_ratio": 3}),
     pareto.spread(all_placements(6), 8)),
], ids=["every-placement", "per-block-type-overrides"])
def test_params_and_macs_of_placements_equal_create_models(overrides_for, placements):
    parts, _ = part_contenders(TINY, overrides_for=overrides_for, resolution=RES, batch_size=2, device="cpu",
                               precision="fp32")
    rows = parts["rows"]
    for placement in placements:
        with torch.device("meta"):
            model = create_model(**TINY, blocks=placement, stage_overrides=overrides_for(placement))
        assert _sum_rows(rows, placement, "params") == count_params(model), placement
        assert _sum_rows(rows, placement, "macs") == count_macs(model, RES), placement


def test_an_override_that_changes_a_stage_output_by_block_type_is_refused():
    def overrides_for(placement):
        return {2: {"out_channels": 96}} if placement[1] == "F" else None
    with pytest.raises(FmbError, match="stage 2 gets a different out_channels"):
        part_contenders(TINY, overrides_for=overrides_for, resolution=RES, batch_size=2, device="cpu",
                        precision="fp32")


def _point(name, cost, speed):
    return {"placement": name, "params": cost, "train_images_per_sec": speed}


def test_pareto_front_layers_and_spread_on_synthetic_points():
    pts = [_point("a", 1, 10), _point("b", 2, 20), _point("c", 2, 15), _point("d", 3, 20), _point("e", 4, 30),
           _point("f", 4, 30), _point("g", 5, 5)]
    front = pareto.front(pts, "params", "train_images_per_sec")
    assert [p["placement"] for p in front] == ["a", "b", "e", "f"]  # c, d, g beaten; equal e and f both kept
    layers = pareto.layers(pts, "params", "train_images_per_sec")
    assert [[p["placement"] for p in layer] for layer in layers] == [["a", "b", "e", "f"], ["c", "d"], ["g"]]
    assert pareto.spread(list("abcdefg"), 3) == ["a", "d", "g"]
    assert pareto.spread(list("ab"), 5) == ["a", "b"]
    picked = pareto.pick_along_front(pts, 6, "params", "train_images_per_sec")
    assert [p["placement"] for p in picked] == ["a", "b", "e", "f", "c", "d"]  # the front first, then the next layer


@pytest.mark.slow
def test_search_outputs_through_the_command(run_cli, tmp_path):
    out, table, png = tmp_path / "search.json", tmp_path / "search.csv", tmp_path / "front.png"
    result = run_cli("profile", "--search", "-v", "efficientnetv2_b0", "--width-mult", "0.25", "--depth-mult", "0.25",
                     "--num-classes", "10", "-r", str(RES), "-b", "2", "--warmup", "1", "--iters", "2",
                     "--validate", "2", "--set", "stage.4.kernel_size=5", "--json", out, "--csv", table,
                     "--plot", png)
    assert result.returncode == 0, result.stderr
    assert "front: params vs predicted train img/s" in result.stdout and "median |error|" in result.stdout
    data = json.loads(out.read_text())
    assert len(data["predictions"]) == 64 and data["paper_placement"] == "FFFMMM"
    by_placement = {p["placement"]: p for p in data["predictions"]}
    for name, members in data["fronts"].items():
        cost, speed = name.split("_")
        points = list(by_placement.values())
        expected = pareto.front(points, cost, f"{speed}_images_per_sec")
        assert members == [p["placement"] for p in expected]
    checked = [r["placement"] for r in data["validated"]]
    front = [r["placement"] for r in data["validated"] if r["why"] == "front"]
    # two picks along the front, plus the paper's placement unless timing made it one of them
    assert len(front) == 2 and len(checked) == len(set(front) | {"FFFMMM"}) and "FFFMMM" in checked
    assert not set(checked) & set(anchors(6))
    for r in data["validated"]:
        assert r["error_train"] == pytest.approx(r["predicted_train_images_per_sec"]
                                                 / r["measured_train_images_per_sec"] - 1)
    assert data["median_abs_error"]["train"] >= 0 and data["timing_s"]["all_end_to_end"] > 0
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert len(rows) == 64 and sum(r["measured_train_images_per_sec"] != "" for r in rows) == len(checked)
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["--blocks", "FFFMMM"], "--blocks does not go with --search"),
    (["--front-cost", "flops"], "unknown --front-cost 'flops'"),
    (["--set", "stage.2.block=F"], "conflicts with the placement search"),
    (["--validate", "-1"], "invalid number of placements to validate -1"),
])
def test_bad_search_input_is_one_line_and_exit_2(run_cli, args, message):
    result = run_cli("profile", "--search", "-v", "efficientnetv2_b0", "--width-mult", "0.25", "-r", str(RES), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("value, expected", [("pareto:3", 3), (["pareto:2"], 2), ("FFFMMM,MMMMMM", None),
                                             (["FFFMMM"], None)])
def test_pareto_count(value, expected):
    assert pareto_count(value) == expected


@pytest.mark.parametrize("value, message", [("pareto:0", "expected pareto:K with K a whole number >= 1"),
                                            ("pareto", "expected pareto:K"),
                                            ("pareto:2,FFFMMM", "stands alone")])
def test_bad_pareto_count(value, message):
    with pytest.raises(FmbError, match=message):
        pareto_count(value)


def _study_preset(tmp_path, **profile):
    cfg = {"model": {"variant": "efficientnetv2_b0", "width_mult": 0.25, "depth_mult": 0.25},
           "data": {"source": "digits", "image_size": RES, "batch_size": 8, "num_workers": 0},
           "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1},
           "ablate": {"profile_only": True, "profile": {"resolution": RES, "batch_size": 4, "device": "cpu",
                                                        "num_classes": 10, **profile}}}
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dry_run_with_pareto_lists_that_many_placements(tmp_path):
    from fmb.ablation.dryrun import plan_ablation

    plan = plan_ablation([_study_preset(tmp_path, warmup=1, iters=2)], placements="pareto:3", out=tmp_path / "s",
                         profile=False)
    assert len(plan["trials"]) == 3 and len(set(plan["trials"])) == 3
    assert all(len(t) == 6 and set(t) <= set("MF") for t in plan["trials"])


@pytest.mark.alone
def test_profile_only_speed_ratios_do_not_depend_on_the_order(tmp_path):
    from fmb.ablation.profiles import profile_placements
    from fmb.ablation.study import load_study

    study = load_study([str(_study_preset(tmp_path, warmup=3, iters=15))], [], placements="FFFFFF,MMMMMM")
    ratios = []
    for order in (["FFFFFF", "MMMMMM"], ["MMMMMM", "FFFFFF"]):  # the first of a fresh list pays no warm-up
        profiles = profile_placements(study, order)
        assert all(error is None for _, error in profiles.values())
        ratios.append({k: profiles["FFFFFF"][0][k] / profiles["MMMMMM"][0][k]
                       for k in ("train_images_per_sec", "infer_images_per_sec")})
    for key in ratios[0]:
        assert ratios[0][key] == pytest.approx(ratios[1][key], rel=0.25), (key, ratios)
