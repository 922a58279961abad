"""A model.pretrained file fmb cannot read is one line in fmb's words: never torch's advice to
set weights_only=False (which would run the file's code)."""
import pytest
import torch

import fmb
from fmb.errors import FmbError


class _Pickled:  # torch's safe loader refuses it: unpickling it could run code
    pass


@pytest.mark.parametrize("content,says", [
    ("object", "it is not a weights file fmb can read safely (it holds Python objects besides tensors"),
    ("junk", "not a weights file fmb can read (IndexError"),
])
def test_unreadable_pretrained_file(tmp_path, content, says):
    path = tmp_path / "weights.pth"
    if content == "object":
        torch.save({"state_dict": _Pickled()}, path)
    else:
        path.write_bytes(b"random junk" * 10)
    with pytest.raises(FmbError) as info:
        fmb.create_model("efficientnetv2_s", num_classes=3, width_mult=0.25, depth_mult=0.25, pretrained=str(path))
    message = str(info.value)
    assert says in message and "\n" not in message and info.value.exit_code == 2
    assert "weights_only" not in message and "trust" not in message


def test_unreadable_safetensors(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(FmbError, match="not a weights file fmb can read"):
        fmb.create_model("efficientnetv2_s", num_classes=3, width_mult=0.25, depth_mult=0.25, pretrained=str(path))
