"""Launcher so `python cli.py ...` works in a checkout without installing the package."""
from fmb.cli import app

if __name__ == "__main__":
    app()
