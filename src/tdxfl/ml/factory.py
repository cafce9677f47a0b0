"""Build the model adapter a federation's ``[training]`` table asks for."""

from __future__ import annotations

from collections.abc import Sequence

from tdxfl.ml.adapter import ModelAdapter

FRAMEWORKS = ("keras", "torch")


def make_adapter(framework: str, model: str, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> ModelAdapter:
    """A ``KerasAdapter`` or ``TorchAdapter`` around a freshly built ``model``."""
    if framework == "keras":
        from tdxfl.ml.keras_adapter import KerasAdapter
        from tdxfl.ml.models import build_model

        return KerasAdapter(build_model(model, input_shape, num_classes, seed=seed))
    if framework == "torch":
        try:
            from tdxfl.ml.torch_adapter import TorchAdapter
            from tdxfl.ml.torch_models import build_torch_model
        except ImportError as e:
            raise RuntimeError("training.framework = \"torch\" needs PyTorch: pip install 'tdxfl[torch]'") from e
        return TorchAdapter(build_torch_model(model, input_shape, num_classes, seed=seed))
    raise ValueError(f"unknown framework {framework!r} (expected one of {FRAMEWORKS})")
