"""Build the model adapter a federation's ``[training]`` table asks for."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from tdxfl.engine.model import ModelAdapter
from tdxfl.errors import ConfigError

__all__ = ["Framework", "make_adapter"]


class Framework(enum.StrEnum):
    """The ML framework a federation trains with (``training.framework``)."""

    KERAS = "keras"
    TORCH = "torch"


def make_adapter(
    framework: Framework | str, model: str, input_shape: Sequence[int], num_classes: int, seed: int = 0
) -> ModelAdapter:
    """A ``KerasAdapter`` or ``TorchAdapter`` around a freshly built ``model``; ConfigError for an
    unknown framework or a missing PyTorch."""
    try:
        framework = Framework(framework)
    except ValueError:
        raise ConfigError(f"unknown framework {framework!r} (expected one of {[str(f) for f in Framework]})") from None
    if framework is Framework.KERAS:
        from tdxfl.ml.keras_adapter import KerasAdapter
        from tdxfl.ml.models import build_model

        return KerasAdapter(build_model(model, input_shape, num_classes, seed=seed))
    try:
        from tdxfl.ml.torch_adapter import TorchAdapter
        from tdxfl.ml.torch_models import build_torch_model
    except ImportError as e:
        raise ConfigError("training.framework = \"torch\" needs PyTorch: pip install 'tdxfl[torch]'") from e
    return TorchAdapter(build_torch_model(model, input_shape, num_classes, seed=seed))
