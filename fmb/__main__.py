from fmb.cli import app

app()
