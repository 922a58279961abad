"""Each private Lightning/torch surface in fmb/compat/ still exists and still does what fmb needs."""
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from fmb.compat import lightning as compat
from fmb.compat import torch_cpu


def test_torch_cpu_bf16_probes_exist_and_answer_a_bool():
    for probe in torch_cpu._BF16_PROBES:
        assert callable(getattr(torch.cpu, probe)), probe
    assert isinstance(torch_cpu.cpu_native_bf16(), bool)


def test_ema_callback_takes_a_multi_avg_fn_in_place_of_its_fixed_decay():
    callback = EMAWeightAveraging(decay=0.9)
    assert "avg_fn" in callback._kwargs  # the fixed-decay average the swap removes

    def average(ema_params, model_params, num_averaged):
        pass
    compat.ema_use_multi_avg_fn(callback, average)
    assert "avg_fn" not in callback._kwargs and callback._kwargs["multi_avg_fn"] is average
    assert compat.ema_averaged_module(callback) is None  # before fit: no averaged copy yet
    model = torch.nn.Linear(2, 2)
    callback._average_model = torch.optim.swa_utils.AveragedModel(model, **callback._kwargs)
    assert compat.ema_averaged_module(callback) is callback._average_model.module


def test_csv_logger_appends_to_an_existing_metrics_file(tmp_path):
    logger = compat.ResumableCSVLogger(tmp_path, name="", version="")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    again = compat.ResumableCSVLogger(tmp_path, name="", version="")
    again.log_metrics({"loss": 0.5}, step=1)
    again.save()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == ["loss", "step"] and len(rows) == 3  # header once, both rows kept


def test_a_checkpoint_marked_to_validate_again_restarts_lightnings_validation_from_its_first_batch():
    from lightning.pytorch import Trainer

    saved = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    val_progress = saved.fit_loop.epoch_loop.val_loop.batch_progress
    val_progress.increment_by(1)  # one of the epoch's validation batches done when SIGTERM came
    checkpoint = {"loops": {"fit_loop": saved.fit_loop.state_dict()}}
    compat.redo_interrupted_validation(checkpoint)

    resumed = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    resumed.fit_loop.load_state_dict(checkpoint["loops"]["fit_loop"])
    val_loop = resumed.fit_loop.epoch_loop.val_loop
    val_loop.restarting = True  # as the restored fit begins
    val_loop.update_restart_stage()
    assert val_loop.restarted_mid_evaluation  # the training loop goes back to validate, not on
    val_loop.batch_progress.reset_on_restart()
    assert val_loop.batch_progress.current.ready == 0  # ...from the first batch
