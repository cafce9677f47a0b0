"""``training.compression`` and its combinations: what config validation accepts and refuses."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tdxfl.config import Federation
from tdxfl.errors import ConfigError


def test_compression_modes_parse(make_federation: Callable[..., Federation]) -> None:
    assert make_federation().training.compression == "none"
    for mode in ("int8", "int4", "topk"):
        t = make_federation(training={"compression": mode, "topk_fraction": 0.05}).training
        assert (t.compression, t.topk_fraction, t.error_feedback) == (mode, 0.05, True)


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        ({"training": {"compression": "zip"}}, "training.compression must be one of"),
        ({"training": {"compression": "topk", "topk_fraction": 0.0}}, "topk_fraction"),
        ({"training": {"compression": "int8", "wire_dtype": "float16"}}, "wire_dtype"),
        (
            {"training": {"mode": "fedavg", "compression": "topk"}, "strategy": {"name": "median"}},
            "robust rule 'median'",
        ),
    ],
)
def test_invalid_compression_settings_are_refused(
    make_federation: Callable[..., Federation], sections: dict[str, dict[str, object]], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        make_federation(**sections)


def test_quantized_updates_combine_with_robust_rules_and_central_dp(make_federation: Callable[..., Federation]) -> None:
    fed = make_federation(training={"mode": "fedavg", "compression": "int8"}, strategy={"name": "median"})
    assert fed.training.compression == "int8"
    fed = make_federation(
        training={"mode": "fedavg", "compression": "topk"}, privacy={"clip_norm": 1.0, "noise_multiplier": 1.0}
    )
    assert fed.privacy.enabled
