"""Every private surface of Lightning and torch that fmb relies on, in one package.

Each is used because the public API lacks the hook; each has a test (tests/test_compat.py)
that fails on a Lightning or torch release that moves it, and pyproject.toml bounds
Lightning's version above the last one tested. torch's are in fmb.compat.torch_cpu, apart from
Lightning's (fmb.compat.lightning), so that detecting the machine does not import Lightning:
ablation jobs and `fmb profile` never train and start seconds sooner without it.
"""
