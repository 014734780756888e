"""Copies of the trainable (adapter) weights, to roll a model back to a known good state."""

from __future__ import annotations

import torch


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter that requires grad (with LoRA: the adapter only, a few MB)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    """Copy a `trainable_state` back into the model, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))
