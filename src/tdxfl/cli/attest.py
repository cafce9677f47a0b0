"""``tdxfl attest`` and ``tdxfl verify-quote`` (owned by the TDX attestation work)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
