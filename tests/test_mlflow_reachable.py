"""An MLflow server that does not answer fails the run in one line before training, within a
few seconds, instead of MLflow's minutes of retries; file stores are not probed."""
import socket
import time

import pytest

from fmb.errors import FmbError
from fmb.training.loggers import check_tracking_server


def test_refused_silent_and_unknown_servers_fail_fast():
    with pytest.raises(FmbError, match=r"run.mlflow_tracking_uri http://127.0.0.1:9 does not answer \(Connection "
                                       r"refused") as info:
        check_tracking_server("http://127.0.0.1:9")
    assert info.value.exit_code == 2
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    port = silent.getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(FmbError, match=f"127.0.0.1:{port} does not answer .*waited up to 0.5 s"):
            check_tracking_server(f"http://user:hunter2@127.0.0.1:{port}", timeout=0.5)
    finally:
        silent.close()
    assert time.monotonic() - started < 5
    try:
        check_tracking_server(f"http://user:hunter2@127.0.0.1:{port}", timeout=0.5)
    except FmbError as exc:
        assert "hunter2" not in str(exc)  # the password in the URI is never echoed
    check_tracking_server("file:///nowhere/mlruns")  # not a server: nothing to probe
    check_tracking_server("sqlite:///mlflow.db")


def test_run_loggers_refuse_an_unreachable_server(tmp_path):
    pytest.importorskip("mlflow")
    from fmb.config import load_config
    from fmb.training.loggers import run_loggers

    cfg = load_config([], ["run.loggers=[csv,mlflow]", "run.mlflow_tracking_uri=http://127.0.0.1:9"])
    with pytest.raises(FmbError, match="does not answer"):
        run_loggers(tmp_path, cfg.run)
