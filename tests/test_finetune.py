"""Fine-tuning from published weights: the config takes what the weights need (an explicit
setting wins, with a warning), the source's eval preprocessing is its own, and a tiny
fine-tune with frozen stages and a faster head trains, evaluates and predicts."""
import warnings

import json

import pytest
import torch
import yaml
from conftest import tiny_train_overrides
from PIL import Image
from pretrained_caches import hub_cache

from fmb.config import load_config
from fmb.data.transforms import build_eval_transform
from fmb.errors import FmbError

HUB = "hf-hub:timm/tf_efficientnetv2_b0.in1k"
# what a timm export with its own preprocessing writes into config.json: [-1, 1], bilinear, no crop
EXPORTED = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear", "crop_pct": 1.0}


def _photo(seed=0, size=(300, 260)):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


def _fmb_eval(cfg):
    d = cfg.data
    return build_eval_transform(d.eval_image_size, d.crop_ratio, interpolation=d.interpolation, mean=d.mean, std=d.std)


def test_config_takes_the_hub_weights_needs_and_their_eval_transform_is_timms(caches):
    import timm.data

    source = hub_cache(caches[0], "tf_efficientnetv2_b0.in1k")
    cfg = load_config([], [f"model.pretrained={HUB}"])
    assert (cfg.model.variant, cfg.model.padding, cfg.model.bn_eps, cfg.model.bn_momentum) == (
        "efficientnetv2_b0", "same", 1e-3, 0.1)
    assert (cfg.data.image_size, cfg.data.eval_image_size, cfg.data.crop_ratio) == (192, 224, 0.875)
    timm_eval = timm.data.create_transform(**timm.data.resolve_data_config(model=source, use_test_size=True))
    image = _photo()
    assert (_fmb_eval(cfg)(image) - timm_eval(image)).abs().max().item() < 1e-5


def test_config_takes_torchvisions_preprocessing(caches):
    import torchvision

    cfg = load_config([], ["model.pretrained=torchvision:EfficientNet_B1_Weights.IMAGENET1K_V2"])
    assert (cfg.model.variant, cfg.model.padding, cfg.model.bn_eps) == ("efficientnet_b1", "symmetric", 1e-5)
    reference = torchvision.models.get_weight("EfficientNet_B1_Weights.IMAGENET1K_V2").transforms()
    image = _photo(1)
    assert (_fmb_eval(cfg)(image) - reference(image)).abs().max().item() < 1e-5


def test_true_is_recorded_as_the_weights_it_stands_for():
    # nothing cached, offline: the table alone completes the config; weights are read at build time
    cfg = load_config([], ["model.pretrained=true"])
    assert cfg.model.pretrained == "hf-hub:timm/tf_efficientnetv2_s.in21k_ft_in1k"
    assert (cfg.data.mean, cfg.data.crop_ratio, cfg.data.image_size, cfg.data.eval_image_size) == (
        [0.5, 0.5, 0.5], 1.0, 300, 384)


def test_an_explicit_setting_wins_with_a_warning():
    with pytest.warns(UserWarning) as caught:
        cfg = load_config([], ["model.pretrained=true", "model.padding=symmetric", "data.mean=[0.4,0.4,0.4]",
                               "data.image_size=64"])
    said = " | ".join(str(w.message) for w in caught)
    assert "model.padding=symmetric kept as set" in said and "data.mean=[0.4, 0.4, 0.4] kept as set" in said
    assert (cfg.model.padding, cfg.data.mean, cfg.data.image_size) == ("symmetric", [0.4, 0.4, 0.4], 64)
    assert cfg.data.eval_image_size is None  # sizes come as a pair: one set, the other scales with it
    assert cfg.data.std == [0.5, 0.5, 0.5]  # the keys left unset still follow the weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # agreeing with the weights is no contradiction
        load_config([], ["model.pretrained=true", "model.padding=same"])


def test_weights_of_another_variant_are_one_line():
    with pytest.raises(FmbError) as info:
        load_config([], ["model.variant=efficientnetv2_m", "model.pretrained=hf-hub:timm/tf_efficientnetv2_s.in1k"])
    assert "expected model.variant=efficientnetv2_s" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_tiny_finetune_trains_evaluates_and_predicts_with_the_sources_preprocessing(caches, image_folder, tmp_path,
                                                                                    run_cli):
    from fmb.inference.predict import load_classifier
    from fmb.training.checkpoints import read_checkpoint_file
    from fmb.training.run import train

    source = hub_cache(caches[0], "tf_efficientnetv2_b0.in1k", data_config=EXPORTED)
    run_dir = tmp_path / "run"
    overrides = tiny_train_overrides(image_folder, run_dir, **{
        "model.width_mult": "null", "model.depth_mult": "null", "model.variant": "efficientnetv2_b0",
        "model.pretrained": HUB, "model.freeze_stages": 2, "optim.head_lr_factor": 10,
        "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1})
    with pytest.warns(UserWarning, match="classifier starts fresh"):
        summary = train(load_config([], overrides))
    assert summary["status"] == "completed" and summary["num_classes"] == 3
    assert summary["pretrained"]["fresh_stages"] == [] and summary["pretrained"]["classifier"] == "fresh"
    assert json.loads((run_dir / "summary.json").read_text())["pretrained"] == summary["pretrained"]

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["pretrained"] == HUB and saved["model"]["padding"] == "same"
    assert saved["model"]["bn_eps"] == 1e-3 and saved["data"]["mean"] == [0.5, 0.5, 0.5]
    assert (saved["data"]["interpolation"], saved["data"]["crop_ratio"]) == ("bilinear", 1.0)

    ckpt = read_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    state, theirs = ckpt["state_dict"], source.state_dict()
    # stem and stages 1-2 frozen: weights and BN statistics as published; stage 3 trained
    for key in ("conv_stem.weight", "bn1.running_mean", "blocks.1.1.bn2.running_var", "blocks.1.0.conv_exp.weight"):
        assert torch.equal(state[f"model.{key}"], theirs[key]), key
    assert not torch.equal(state["model.blocks.2.0.conv_exp.weight"], theirs["blocks.2.0.conv_exp.weight"])
    groups = ckpt["optimizer_states"][0]["param_groups"]
    base = [g["initial_lr"] for g in groups if "lr_factor" not in g]
    head = [g["initial_lr"] for g in groups if g.get("lr_factor") == 10]
    assert head and set(head) == {10 * base[0]}

    classifier = load_classifier(run_dir / "checkpoints" / "last.ckpt")
    assert classifier.preprocessing["mean"] == (0.5, 0.5, 0.5)
    assert classifier.preprocessing["interpolation"] == "bilinear"
    assert run_cli("predict", run_dir / "checkpoints" / "last.ckpt", image_folder, "--device", "cpu").returncode == 0
    assert run_cli("eval", run_dir / "checkpoints" / "last.ckpt").returncode == 0


def test_the_datamodule_normalizes_with_the_weights_mean_and_std(caches, image_folder):
    from fmb.data import ImageDataModule

    cfg = load_config([], [f"data.source={image_folder}", "model.pretrained=true", "data.image_size=32",
                           "data.eval_image_size=32", "data.num_workers=0"])
    data = ImageDataModule(cfg.data, cfg.aug)
    data.setup("fit")
    images, _ = next(iter(data.val_dataloader()))
    assert images.min() >= -1.0 and images.max() <= 1.0  # [-1, 1]: mean = std = 0.5, not ImageNet's


def test_a_placement_study_starts_each_trial_from_the_pretrained_weights(caches, tmp_path):
    """Each trial's `fmb train` config (its -c file and command line, as fmb ablate writes them)
    builds its placement from the weights: the swapped stages fresh, the rest loaded."""
    from fmb.ablation.runner import trial_command
    from fmb.ablation.study import load_study
    from fmb.models import create_model
    from fmb.training.module import model_kwargs

    hub_cache(caches[0], "tf_efficientnetv2_b0.in1k")
    study = load_study(["digits_quick"], [f"model.pretrained={HUB}", "model.width_mult=null", "model.depth_mult=null"],
                       placements="FFFMMM,MFFMMM,MMMMMM", seeds=[0])
    fresh = {}
    for placement in study.placements:
        path = tmp_path / f"{placement}.yaml"
        path.write_text(yaml.safe_dump(study.trial_config(placement)))
        command = trial_command(study, path, placement, 0, tmp_path / placement)
        cfg = load_config([path], command[command.index("train") + 3:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = create_model(**model_kwargs(cfg.model), num_classes=10, pretrained=cfg.model.pretrained)
        fresh[placement] = sorted(model.pretrained_report.fresh)
    assert fresh == {"FFFMMM": [], "MFFMMM": [1], "MMMMMM": [1, 2, 3]}


def test_the_v2s_finetune_preset_takes_the_default_weights_and_their_preprocessing():
    cfg = load_config(["finetune_v2s"], ["data.image_size=64", "data.eval_image_size=64"])
    assert (cfg.model.variant, cfg.model.pretrained, cfg.model.padding) == (
        "efficientnetv2_s", "hf-hub:timm/tf_efficientnetv2_s.in21k_ft_in1k", "same")
    assert (cfg.model.freeze_stages, cfg.optim.head_lr_factor, cfg.data.source) == (2, 10, "digits")
    assert (cfg.data.mean, cfg.data.std, cfg.data.crop_ratio) == ([0.5] * 3, [0.5] * 3, 1.0)
