"""The `next:` line after a run pastes into a POSIX shell as the commands it names, whatever
characters the run's path holds."""
import shlex

from fmb.training.summary import next_step_hint


def test_next_commands_are_shell_quoted():
    ckpt = "/data/my runs/it's $HOME;rm -rf x/checkpoints/best-epoch003.ckpt"
    hint = next_step_hint({"best_checkpoint": ckpt, "last_checkpoint": None, "variant": "efficientnetv2_s"})
    assert hint.startswith("next: ")
    commands = [shlex.split(part) for part in hint.removeprefix("next: ").split("   |   ")]
    assert commands[0] == ["fmb", "eval", ckpt]  # one argument, no expansion, no second command
    assert commands[2] == ["fmb", "profile", "--variant", "efficientnetv2_s", "--compare-blocks"]
    plain = next_step_hint({"best_checkpoint": None, "last_checkpoint": "/runs/a/last.ckpt", "variant": "x"})
    assert "fmb eval /runs/a/last.ckpt " in plain  # a plain path stays unquoted and readable
