"""Shared fixtures: a small simulated federation on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from fedtools import federation_doc
from tdxfl.config import Federation, parse_federation


@pytest.fixture
def make_federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Federation]:
    """Build a test federation; keyword arguments update its sections."""
    monkeypatch.setenv("TDXFL_MODEL_SECRET", "test secret, not for production")

    def make(**sections: dict[str, Any]) -> Federation:
        return parse_federation(federation_doc(tmp_path, **sections))

    return make
