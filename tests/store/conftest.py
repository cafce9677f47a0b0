"""Store test configuration: the ``vm`` marker for tests that boot a small VM."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``vm`` marker (``-m 'not vm'`` deselects the VM test; CI runs it)."""
    config.addinivalue_line(
        "markers",
        "vm: boots a small qemu/TCG VM with virtme-ng and a Debian kernel (needs scripts/provision-vm-test.sh)",
    )
