"""Exponential moving average of a model's weights (Polyak averaging), the weights NequIP and MACE
validate and ship: it averages out the last steps' optimiser noise at no extra training cost."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """Shadow copy of the parameters, updated after each optimiser step as
    shadow ← d·shadow + (1 − d)·weights, with d = min(decay, (1 + n) / (10 + n)) after n updates (a
    short warm-up, so the first steps do not leave the initial weights in the average for long)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), not {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()}

    def rate(self) -> float:
        """The decay d of the next update."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.rate()
        for k, p in model.named_parameters():
            self.shadow[k].mul_(d).add_(p.detach(), alpha=1.0 - d)
        self.updates += 1

    @contextmanager
    @torch.no_grad()
    def applied(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The model with the averaged weights inside the block, its own weights restored after."""
        params = dict(model.named_parameters())
        saved = {k: p.detach().clone() for k, p in params.items()}
        for k, p in params.items():
            p.copy_(self.shadow[k])
        try:
            yield model
        finally:
            for k, p in params.items():
                p.copy_(saved[k])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.updates = state["updates"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
