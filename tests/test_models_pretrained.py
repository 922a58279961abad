"""`pretrained=` from the Hugging Face Hub cache, torch.hub's cache and fmb's table, offline:
the sources' logits with the padding and BatchNorm they need, other placements, one-line errors."""
import json
import subprocess
import sys
import urllib.error

import pytest
import torch
from pretrained_caches import hub_cache, torch_hub_cache

import fmb
from fmb.errors import FmbError
from fmb.models.partial import LoadReport
from fmb.models.pretrained import resolve
from fmb.models.published import PUBLISHED, default_weights

V2_HUB = "hf-hub:timm/tf_efficientnetv2_b0.in1k"
V1_TV = "torchvision:EfficientNet_B0_Weights.IMAGENET1K_V1"


def _max_diff(ours, theirs, size=64):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (ours.eval()(x) - theirs.eval()(x)).abs().max().item()


def test_hub_tf_weights_give_timm_logits_with_same_padding_set(caches):
    source = hub_cache(caches[0], "tf_efficientnetv2_b0.in1k")
    model = fmb.create_model("efficientnetv2_b0", pretrained=V2_HUB)
    assert model.padding == "same" and model.bn1.eps == 1e-3  # TF-trained: TF padding and eps, unasked
    assert _max_diff(model, source) <= 1e-4
    assert model.pretrained_report.as_dict() == {"source": V2_HUB, "origin": "timm-tf", "classifier": "loaded",
                                                 "loaded_stages": [1, 2, 3, 4, 5, 6], "fresh_stages": []}


def test_hub_preprocessing_is_timms_own(caches):
    import timm.data

    source = hub_cache(caches[0], "tf_efficientnetv2_b0.in1k")
    timm_cfg = timm.data.resolve_data_config(model=source, use_test_size=True)
    assert resolve(V2_HUB).preprocessing == {
        "mean": list(timm_cfg["mean"]), "std": list(timm_cfg["std"]), "interpolation": timm_cfg["interpolation"],
        "crop_ratio": timm_cfg["crop_pct"], "eval_image_size": timm_cfg["input_size"][-1], "image_size": 192}


def test_v1_from_a_bin_file_without_config_uses_fmbs_table(caches):
    source = hub_cache(caches[0], "tf_efficientnet_b0.ap_in1k", safetensors=False, config=False)
    model = fmb.create_model("efficientnet_b0", pretrained="hf-hub:timm/tf_efficientnet_b0.ap_in1k")
    assert model.padding == "same" and _max_diff(model, source) <= 1e-4
    # AdvProp weights expect [-1, 1] inputs: the table says so where the repo's config.json is absent
    assert resolve("hf-hub:timm/tf_efficientnet_b0.ap_in1k").preprocessing["mean"] == [0.5, 0.5, 0.5]


def test_torchvision_v1_weights_give_torchvision_logits(caches):
    source = torch_hub_cache(caches[1], "EfficientNet_B0_Weights.IMAGENET1K_V1")
    model = fmb.create_model("efficientnet_b0", pretrained=V1_TV)
    assert model.padding == "symmetric" and model.bn1.eps == 1e-5
    assert _max_diff(model, source) <= 1e-4
    pre = resolve(V1_TV).preprocessing
    assert (pre["eval_image_size"], pre["crop_ratio"], pre["interpolation"]) == (224, 224 / 256, "bicubic")


def test_true_loads_the_variants_default_from_the_table(caches):
    assert default_weights("efficientnetv2_b0").spec == V2_HUB
    source = hub_cache(caches[0], "tf_efficientnetv2_b0.in1k")
    assert _max_diff(fmb.create_model("efficientnetv2_b0", pretrained=True), source) <= 1e-4


def test_another_placement_loads_every_matching_stage_and_reports_the_fresh_ones(caches):
    hub_cache(caches[0], "tf_efficientnetv2_b0.in1k")
    reference = fmb.create_model("efficientnetv2_b0", pretrained=V2_HUB).state_dict()
    torch.manual_seed(5)
    fresh = fmb.create_model("efficientnetv2_b0", blocks="FFFFMM", num_classes=10).state_dict()
    torch.manual_seed(5)  # the same initialisation: the stage that starts fresh must keep it
    with pytest.warns(UserWarning, match=r"stage 4 starts fresh \(F here, M in the weights\)"):
        model = fmb.create_model("efficientnetv2_b0", pretrained=V2_HUB, blocks="FFFFMM", num_classes=10)
    report: LoadReport = model.pretrained_report
    assert report.loaded_stages == [1, 2, 3, 5, 6] and sorted(report.fresh) == [4] and report.classifier_fresh
    for key, tensor in model.state_dict().items():
        expected = fresh[key] if key.startswith(("blocks.3.", "classifier.")) else reference[key]
        assert torch.equal(tensor, expected), key
    assert "classifier starts fresh (10 classes, the weights have 1000)" in report.describe()


def test_missing_hub_cache_is_one_line_naming_the_cache_and_the_fix(caches):
    with pytest.raises(FmbError) as info:
        fmb.create_model("efficientnetv2_b0", pretrained=V2_HUB)
    text = str(info.value)
    assert "\n" not in text and str(caches[0] / "models--timm--tf_efficientnetv2_b0.in1k") in text
    assert "HF_HUB_OFFLINE=1" in text and "hf download timm/tf_efficientnetv2_b0.in1k" in text


def test_missing_torch_hub_cache_is_one_line(caches, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(FmbError) as info:
        fmb.create_model("efficientnet_b0", pretrained=V1_TV)
    text = str(info.value)
    assert "\n" not in text and str(caches[1] / "hub" / "checkpoints" / "efficientnet_b0_rwightman-7f5810bc.pth") in text
    assert "get_weight('EfficientNet_B0_Weights.IMAGENET1K_V1').get_state_dict()" in text


def test_wrong_variant_and_unknown_names_are_one_line(caches):
    with pytest.raises(FmbError, match="holds efficientnetv2_b0 weights.*expected model.variant=efficientnetv2_b0"):
        hub_cache(caches[0], "tf_efficientnetv2_b0.in1k")
        fmb.create_model("efficientnetv2_s", pretrained=V2_HUB)
    with pytest.raises(FmbError, match="did you mean 'torchvision:EfficientNet_V2_S_Weights.IMAGENET1K_V1'"):
        fmb.create_model("efficientnetv2_s", pretrained="torchvision:EfficientNet_V2_S_Weights.IMAGENET_V1")
    with pytest.raises(FmbError, match="timm's 'efficientnetv2_rw_s', which is not an fmb variant"):
        resolve("hf-hub:timm/efficientnetv2_rw_s.ra2_in1k")


def test_an_explicit_padding_wins_with_a_warning(caches):
    hub_cache(caches[0], "tf_efficientnetv2_b0.in1k")
    with pytest.warns(UserWarning, match="padding='symmetric' kept, but .* trained with padding='same'"):
        model = fmb.create_model("efficientnetv2_b0", pretrained=V2_HUB, padding="symmetric")
    assert model.padding == "symmetric"


def test_the_table_covers_every_variant_with_known_sources():
    assert set(PUBLISHED) == set(fmb.list_models())
    for variant, rows in PUBLISHED.items():
        for p in rows:
            assert p.variant == variant and p.spec.startswith(("hf-hub:timm/", "torchvision:EfficientNet_"))
            assert p.padding == ("same" if "/tf_" in p.spec else "symmetric")


def test_the_tables_torchvision_rows_match_torchvision():
    import torchvision

    for rows in PUBLISHED.values():
        for p in rows:
            if p.spec.startswith("torchvision:"):
                keys = torchvision.models.get_weight(p.spec.removeprefix("torchvision:")).transforms.keywords
                assert (p.eval_size, p.crop_ratio, p.interpolation) == (
                    keys["crop_size"], keys["crop_size"] / keys["resize_size"], keys["interpolation"].value), p.spec
                assert list(p.mean) == list(keys.get("mean", (0.485, 0.456, 0.406))), p.spec


def test_the_tables_timm_rows_match_timms_pretrained_cfgs():
    from timm.models import get_pretrained_cfg

    for rows in PUBLISHED.values():
        for p in rows:
            if p.spec.startswith("hf-hub:"):
                cfg = get_pretrained_cfg(p.spec.removeprefix("hf-hub:timm/")).to_dict()
                test = cfg.get("test_input_size")
                assert (p.train_size, p.eval_size, p.interpolation) == (
                    cfg["input_size"][-1], (test or cfg["input_size"])[-1], cfg["interpolation"]), p.spec
                assert p.crop_ratio == (cfg.get("test_crop_pct") if test and cfg.get("test_crop_pct")
                                        else cfg["crop_pct"]), p.spec
                assert (p.mean, p.std) == (tuple(cfg["mean"]), tuple(cfg["std"])), p.spec


def test_fmb_models_pretrained_lists_the_table(run_cli, tmp_path):
    out = tmp_path / "weights.json"
    result = run_cli("models", "--pretrained", "--variant", "efficientnetv2_s", "--json", out)
    assert result.returncode == 0, result.stderr
    assert "tf_efficientnetv2_s.in21k_ft_in1k" in result.stdout and "EfficientNet_V2_S_Weights" in result.stdout
    rows = json.loads(out.read_text())["pretrained"]
    assert rows[0]["spec"] == "hf-hub:timm/tf_efficientnetv2_s.in21k_ft_in1k" and rows[0]["default"]
    assert {r["variant"] for r in rows} == {"efficientnetv2_s"}


@pytest.mark.subprocess
def test_fmb_models_builds_no_network_and_imports_no_torch():
    # the tables answer: a fresh interpreter runs both listings without importing torch at all
    code = ("import sys; from fmb.cli import app\n"
            "for args in (['models'], ['models', '--pretrained']):\n"
            "    try: app(args, prog_name='fmb')\n"
            "    except SystemExit as e: assert not e.code, e.code\n"
            "print('torch imported:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout and "efficientnet_b7" in result.stdout


@pytest.mark.slow
def test_the_variant_table_equals_a_fresh_count_of_every_variant():
    from fmb.models.variant_table import SIZES
    from fmb.profiling.report import describe_variant

    assert set(SIZES) == set(fmb.list_models())
    for name, (params, gmacs) in SIZES.items():
        counted = describe_variant(name)
        assert (counted["params"], counted["gmacs"]) == (params, gmacs), name
