"""Pretrained weights into another placement: which stages load and which start fresh.

A stage whose block type differs from the weights' (Fused-MBConv here, MBConv there) has
other layers, so it keeps its fresh initialisation; every other tensor must fit by name and
shape as usual (weights.load_into). Only a network with the weights' number of stages is
read this way: anything else is another variant, and the strict errors say where.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

LETTER = {"fused": "F", "mbconv": "M"}


def their_stage(key: str, origin: str) -> int | None:
    """Stage number (from 1) of a checkpoint key in its own layout; None for stem, head, classifier.
    torchvision's `features.0` is the stem and its last `features.N` the head: the caller drops those."""
    match = re.match(r"features\.(\d+)\." if origin == "torchvision" else r"blocks\.(\d+)\.", key)
    if match is None:
        return None
    return int(match.group(1)) if origin == "torchvision" else int(match.group(1)) + 1


def stage_blocks(state: dict, origin: str) -> dict[int, str]:
    """The checkpoint's block type per stage: MBConv where the stage has a depthwise k×k conv."""
    blocks: dict[int, str] = {}
    for key, tensor in state.items():
        stage = their_stage(key, origin)
        if stage is None:
            continue
        depthwise = tensor.ndim == 4 and tensor.shape[1] == 1 and tensor.shape[-1] > 1
        blocks[stage] = "mbconv" if depthwise or blocks.get(stage) == "mbconv" else "fused"
    if origin == "torchvision":
        blocks = {s: b for s, b in blocks.items() if 0 < s < max(blocks)}  # drop stem and head
    return blocks


def fresh_stages(model, state: dict, origin: str) -> dict[int, str]:
    """{stage: why} for the stages of `model` whose block type differs from the weights'."""
    theirs = stage_blocks(state, origin)
    specs = getattr(model, "stages_spec", ())
    if len(theirs) != len(specs) or set(theirs) != set(range(1, len(specs) + 1)):
        return {}
    return {s: f"{LETTER[spec.block]} here, {LETTER[theirs[s]]} in the weights"
            for s, spec in enumerate(specs, start=1) if spec.block != theirs[s]}


def _ranges(numbers) -> str:
    numbers, parts = sorted(numbers), []
    for n in numbers:
        if parts and n == parts[-1][1] + 1:
            parts[-1][1] = n
        else:
            parts.append([n, n])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


@dataclass
class LoadReport:
    """What pretrained weights filled: recorded in the run's summary, printed at load."""
    source: str
    origin: str
    stages: int
    fresh: dict[int, str] = field(default_factory=dict)  # stage → why it starts fresh
    classifier_fresh: bool = False
    classes: tuple[int, int] | None = None  # (ours, the weights') when the classifier is fresh

    @property
    def loaded_stages(self) -> list[int]:
        return [s for s in range(1, self.stages + 1) if s not in self.fresh]

    def fresh_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the parameters the weights did not provide."""
        return tuple(f"blocks.{s - 1}." for s in sorted(self.fresh)) + (("classifier.",) if self.classifier_fresh else ())

    def is_fresh(self, name: str) -> bool:
        return name.startswith(self.fresh_prefixes())

    def as_dict(self) -> dict:
        return {"source": self.source, "origin": self.origin, "loaded_stages": self.loaded_stages,
                "fresh_stages": sorted(self.fresh), "classifier": "fresh" if self.classifier_fresh else "loaded"}

    def describe(self) -> str:
        loaded = f"stages {_ranges(self.loaded_stages)}" if self.loaded_stages else "no stage"
        text = f"{self.source}: stem, {loaded} and head loaded"
        for stage, why in sorted(self.fresh.items()):
            text += f"; stage {stage} starts fresh ({why})"
        if self.classifier_fresh:
            ours, theirs = self.classes or ("?", "?")
            text += f"; classifier starts fresh ({ours} classes, the weights have {theirs})"
        return text

