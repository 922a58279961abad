"""Loggers writing into the run directory, chosen by `run.loggers` (Lightning's own loggers).

- csv: `metrics.csv` in the run dir (always; a resumed run appends to it) + `hparams.yaml`;
- tensorboard: `tensorboard/`;
- wandb: W&B, files under `wandb/` (`run.wandb_offline=true`: no network, `wandb sync` later);
  a resumed run continues the same W&B run (its id comes from the run dir);
- mlflow: MLflow, by default a file store at `mlruns/` in the run dir (`run.mlflow_tracking_uri`
  for a server); each resumed segment is its own MLflow run, tagged with the run dir.

Every logger gets the hyperparameters: the whole config (Lightning logs the module's) plus
the resolved placement, parameter count, classes and global batch (`LogHyperparameters`).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from fmb.compat.lightning import ResumableCSVLogger
from fmb.errors import FmbError

LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")


def _missing(name: str, package: str) -> FmbError:
    return FmbError(f"run.loggers includes {name} but {package} is not installed; expected "
                    f"pip install 'fmb[{name}]' (or drop {name} from run.loggers)")


def _tensorboard(run_dir: Path, run):
    from lightning.pytorch.loggers import TensorBoardLogger
    try:
        import tensorboard  # noqa: F401 - Lightning falls back to tensorboardX silently otherwise
    except ImportError:
        raise _missing("tensorboard", "tensorboard") from None
    return TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="", default_hp_metric=False)


def _wandb(run_dir: Path, run):
    from lightning.pytorch.loggers import WandbLogger
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise _missing("wandb", "wandb") from None
    run_id = "fmb-" + hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]  # same run on resume
    return WandbLogger(name=run.name or run_dir.parent.name, save_dir=str(run_dir), project=run.wandb_project,
                       offline=run.wandb_offline, id=run_id, resume="allow")


def _mlflow(run_dir: Path, run):
    from lightning.pytorch.loggers import MLFlowLogger
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise _missing("mlflow", "mlflow-skinny") from None
    uri = run.mlflow_tracking_uri or (run_dir / "mlruns").resolve().as_uri()
    check_tracking_server(uri)
    if uri.startswith("file:"):  # MLflow 3 keeps the file store behind this opt-in (no server, no database)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(experiment_name=run.name or run_dir.parent.name or "fmb", run_name=run_dir.name,
                        tracking_uri=uri, tags={"run_dir": str(run_dir.resolve())})


REACH_TIMEOUT_S = 5.0  # a server on the same network answers in milliseconds


def check_tracking_server(uri: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Fail in one line, before training, when an http(s) MLflow server does not answer.

    MLflow's client retries each request with backoff for minutes, so an unreachable server
    would otherwise hang the run at its first logged value. Any HTTP answer (even 401 or 404)
    means something is there; no answer within `timeout` is the error."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return  # file stores and databases: MLflow reports their errors itself, without retrying
    shown = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl() \
        if parts.hostname else uri  # never echo a password in the URI
    try:
        urllib.request.urlopen(urllib.request.Request(uri, method="GET"), timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        if exc.code not in (502, 503, 504):  # a gateway's "nothing behind me" is no answer either
            return
        reason = exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
    else:
        return
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    raise FmbError(f"run.mlflow_tracking_uri {shown} does not answer ({text}, waited up to {timeout:g} s); "
                   "expected a running MLflow server, or run.mlflow_tracking_uri=null for a file store in the "
                   "run dir, or mlflow dropped from run.loggers")


_BUILDERS = {"tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow}


def run_loggers(run_dir: Path, run=None) -> list:
    """The loggers `run.loggers` names (a RunConfig; None = csv + tensorboard), CSV first."""
    names = list(run.loggers) if run is not None else ["csv", "tensorboard"]
    loggers = [ResumableCSVLogger(save_dir=run_dir, name="", version="")]
    for name in names:
        if name != "csv":
            loggers.append(_BUILDERS[name](Path(run_dir), run))
    return loggers


def flat_hyperparameters(config: dict, prefix: str = "") -> dict:
    """{'model.variant': ..., 'data.batch_size': ...}: one scalar per key, as dashboards want."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "stage_overrides":
            flat.update(flat_hyperparameters(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat


class LogHyperparameters(L.Callback):
    """At fit start, log what the config alone does not say: the resolved placement, parameter
    count, classes and batch sizes, and the config flattened to dotted keys."""

    def on_fit_start(self, trainer, pl_module):
        if not trainer.loggers:
            return
        from fmb.training.optim import global_batch_size

        model = getattr(pl_module, "model", None)
        values = flat_hyperparameters(pl_module.hparams.get("config") or {})
        values.update({
            "placement": getattr(model, "placement", None),
            "params": sum(p.numel() for p in pl_module.parameters()),
            "num_classes": pl_module.hparams.get("num_classes"),
            "world_size": trainer.world_size,
            "global_batch_size": global_batch_size(values.get("data.batch_size") or 1, trainer),
        })
        self._log(trainer, values)

    @rank_zero_only
    def _log(self, trainer, values):
        for logger in trainer.loggers:
            logger.log_hyperparams(values)
