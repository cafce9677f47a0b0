"""PyTorch model builders mirroring the Keras ones (inputs are NHWC numpy, as the loaders give).

Models return logits; the adapter applies cross-entropy. Parameter names (``conv1.weight``...)
come from the module structure and are identical in every process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["TORCH_MODEL_NAMES", "build_torch_model"]


class _ChannelsFirst(nn.Module):
    """NHWC -> NCHW, so torch convolutions take the data loaders' layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def _small_cnn(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    h, w, c = input_shape
    return nn.Sequential(
        _ChannelsFirst(),
        nn.Conv2d(c, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 2) * (w // 2), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def _mlp(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    n = 1
    for d in input_shape:
        n *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 16), nn.Tanh(), nn.Linear(16, num_classes))


_BUILDERS = {"small_cnn": _small_cnn, "mlp": _mlp}
TORCH_MODEL_NAMES = tuple(_BUILDERS)


def build_torch_model(name: str, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> nn.Module:
    """Build a model; the same ``seed`` gives the same initial weights."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown PyTorch model {name!r} (available: {', '.join(TORCH_MODEL_NAMES)})")
    torch.manual_seed(seed)
    return _BUILDERS[name](tuple(input_shape), num_classes)
