"""PyTorch implementation of :class:`~tdxfl.engine.model.ModelAdapter`.

Weights are the module's ``state_dict`` entries in order: parameters that require gradients are
trainable, buffers (e.g. batch-norm running statistics) are not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from tdxfl.engine.data import batches
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.records import TensorSpec

__all__ = ["TorchAdapter"]


class TorchAdapter(ModelAdapter):
    """Wrap an ``nn.Module`` that maps a float32 batch to class logits; ``loss(logits, labels)``
    defaults to cross-entropy."""

    def __init__(
        self, model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        self.model = model
        self._tensors = dict(model.state_dict(keep_vars=True))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self._names = list(self._tensors)
        self._mask = [n in trainable for n in self._names]
        self._specs = [
            TensorSpec(n, str(t.dtype).removeprefix("torch."), tuple(int(d) for d in t.shape))
            for n, t in self._tensors.items()
        ]
        self._loss = loss if loss is not None else nn.CrossEntropyLoss()

    def specs(self) -> list[TensorSpec]:
        return list(self._specs)

    def get_weights(self) -> list[np.ndarray]:
        return [t.detach().cpu().numpy().copy() for t in self._tensors.values()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        if len(weights) != len(self._names):
            raise ValueError(f"expected {len(self._names)} arrays, got {len(weights)}")
        with torch.no_grad():
            for (name, t), w in zip(self._tensors.items(), weights):
                if tuple(w.shape) != tuple(t.shape):
                    raise ValueError(f"{name}: shape {tuple(w.shape)} != {tuple(t.shape)}")
                # np.asarray keeps 0-d tensors 0-d (BatchNorm's num_batches_tracked): ascontiguousarray would not
                t.copy_(torch.from_numpy(np.asarray(w, order="C")))

    def trainable_mask(self) -> list[bool]:
        return list(self._mask)

    def non_trainable_weights(self) -> list[np.ndarray]:
        return [w for w, m in zip(self.get_weights(), self._mask) if not m]

    def compute_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], float]:
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        loss = self._loss(self.model(torch.from_numpy(x)), torch.from_numpy(y).long())
        loss.backward()
        grads = []
        for t, m in zip(self._tensors.values(), self._mask):
            if m:
                g = t.grad
                grads.append(np.zeros(tuple(t.shape), np.float32) if g is None else g.detach().cpu().numpy().copy())
        return grads, float(loss.detach())

    def train_local(
        self,
        x: np.ndarray,
        y: np.ndarray,
        steps: int,
        batch_size: int,
        learning_rate: float,
        optimizer: str = "sgd",
        seed: int = 0,
        *,
        proximal_mu: float = 0.0,
    ) -> dict[str, float]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        anchor = [p.detach().clone() for p in params] if proximal_mu else []  # FedProx: the global model
        if optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=learning_rate)
        elif optimizer == "adam":
            opt = torch.optim.Adam(params, lr=learning_rate)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r} (expected 'sgd' or 'adam')")
        self.model.train()
        it = batches(x, y, batch_size, seed=seed)
        total = 0.0
        for _ in range(steps):
            xb, yb = next(it)
            opt.zero_grad(set_to_none=True)
            loss = self._loss(self.model(torch.from_numpy(xb)), torch.from_numpy(yb).long())
            loss.backward()
            with torch.no_grad():  # the gradient of proximal_mu / 2 * ||w - w0||^2
                for p, p0 in zip(params, anchor):
                    if p.grad is not None:
                        p.grad.add_(p - p0, alpha=proximal_mu)
            opt.step()
            total += float(loss.detach())
        return {"loss": total / max(1, steps), "num_samples": float(len(x)), "steps": float(steps)}

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> tuple[float, float]:
        self.model.eval()
        loss_sum = 0.0
        correct = 0
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                logits = self.model(torch.from_numpy(x[i : i + batch_size]))
                yb = torch.from_numpy(y[i : i + batch_size]).long()
                loss_sum += float(self._loss(logits, yb)) * len(yb)
                correct += int((logits.argmax(dim=1) == yb).sum())
        return loss_sum / len(x), correct / len(x)
