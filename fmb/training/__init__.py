"""Training and evaluation on Lightning: the module, its recipe, runs, resume, eval."""
