"""The model interface a framework plugs into: what the round engine asks of a model.

The parameter server and the workers only ever see numpy arrays and :class:`TensorSpec` lists;
everything framework-specific (Keras/TensorFlow, PyTorch) lives behind a
:class:`ModelAdapter`.

Conventions shared by every implementation:

* **All weights** (``specs``/``get_weights``/``set_weights``) are listed in one stable order with
  unique names that are identical in every process that builds the same model.
* **Trainable weights** are the subset where ``trainable_mask()`` is true, in the same relative
  order; gradients are returned in that order.
* **Non-trainable weights** (e.g. BatchNorm moving statistics) are the complement, in the same
  relative order; training updates them locally and the server may average them.
* Labels are integer class ids; the loss is a mean over the batch.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from tdxfl.engine.records import TensorSet, TensorSpec

__all__ = ["ModelAdapter"]


class ModelAdapter(abc.ABC):
    """A model as seen by the federated core: named numpy weights, gradients, local training."""

    @abc.abstractmethod
    def specs(self) -> list[TensorSpec]:
        """Name, dtype and shape of every weight, in the stable order of ``get_weights``."""

    @abc.abstractmethod
    def get_weights(self) -> list[np.ndarray]:
        """Copies of all weights (trainable and not), in the order of ``specs``."""

    @abc.abstractmethod
    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Overwrite all weights; ``weights`` must match ``specs`` in count and shapes.

        Raises:
            ValueError: on a count or shape mismatch (nothing is changed then).
        """

    @abc.abstractmethod
    def trainable_mask(self) -> list[bool]:
        """For each entry of ``specs``: whether it is trainable (receives gradients)."""

    @abc.abstractmethod
    def non_trainable_weights(self) -> list[np.ndarray]:
        """Copies of the non-trainable weights (mask false), in ``specs`` order."""

    @abc.abstractmethod
    def compute_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], float]:
        """Gradients of the mean loss on ``(x, y)`` w.r.t. the trainable weights, and that loss.

        The forward pass runs in training mode, so layers such as BatchNorm use batch statistics
        and update their (non-trainable) moving statistics locally. Weights are not otherwise
        changed. Gradients come back in trainable order (the mask-true subset of ``specs``).
        """

    @abc.abstractmethod
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
        """Run ``steps`` optimizer steps on shuffled minibatches, starting from current weights.

        The optimizer (``"sgd"`` or ``"adam"``) starts from a fresh state on every call (as in
        FedAvg, where each round begins from the global model). ``seed`` fixes the batch order.
        With ``proximal_mu > 0`` (FedProx) the objective is the mean loss plus
        ``proximal_mu / 2 * ||w - w0||^2`` over the trainable weights, ``w0`` their values at the
        start of the call (the global model); the reported loss is the data loss alone.

        Returns:
            ``{"loss": mean training loss over the steps, "num_samples": len(x),
            "steps": steps}``.
        """

    @abc.abstractmethod
    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> tuple[float, float]:
        """Mean loss and accuracy on ``(x, y)`` in inference mode; weights are not changed."""

    # -- helpers built on the abstract methods -----------------------------------------------

    def trainable_specs(self) -> list[TensorSpec]:
        """Specs of the trainable weights (the order of ``compute_gradients``' result)."""
        return [s for s, t in zip(self.specs(), self.trainable_mask()) if t]

    def non_trainable_specs(self) -> list[TensorSpec]:
        """Specs of the non-trainable weights (the order of ``non_trainable_weights``)."""
        return [s for s, t in zip(self.specs(), self.trainable_mask()) if not t]

    def get_tensor_set(self) -> TensorSet:
        """All weights as a :class:`TensorSet` (names from ``specs``)."""
        return TensorSet(list(self.specs()), self.get_weights())

    def num_params(self) -> int:
        """Total number of scalar weights (trainable and not)."""
        return sum(s.size for s in self.specs())
