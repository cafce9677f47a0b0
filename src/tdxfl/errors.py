"""Every error tdxfl raises on purpose, in one tree.

``TdxflError`` is the root: catching it catches every refusal and failure that tdxfl reports,
and nothing else (a bug stays a traceback). Each subclass is one kind of outcome a caller can act
on; callers branch on the class, never on the message. The CLI maps each class once to an exit
code and prints its message as one line (:mod:`tdxfl.cli.exits`).

This module imports nothing from tdxfl: every layer may raise these.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "AttestationRefused",
    "ConfigError",
    "FederationError",
    "KeyRefused",
    "LinkError",
    "RecordError",
    "SealedFileError",
    "TaskError",
    "TdxflError",
    "Unavailable",
    "WrongKey",
]


class TdxflError(Exception):
    """Base of every error tdxfl raises on purpose; the message is one line, fit for a user."""


class ConfigError(TdxflError):
    """A configuration (federation file, broker file, policy, CLI setting) is invalid; the
    message names the key."""


class AttestationError(TdxflError):
    """Evidence could not be produced, parsed or verified (no TD, malformed quote, no collateral)."""


class AttestationRefused(AttestationError):
    """A peer's evidence did not meet our policy, or the peer refused ours; says who and why."""


class KeyRefused(TdxflError):
    """The key broker refused to release a key (or to record something); ``reason`` says why."""

    def __init__(self, key_name: str, reason: str) -> None:
        super().__init__(f"key broker refused key {key_name!r}: {reason}")
        self.key_name = key_name
        self.reason = reason


class SealedFileError(TdxflError):
    """A sealed file (or keystore, or volume) cannot be opened: tampered, truncated, reordered or
    not one at all."""


class WrongKey(SealedFileError):
    """The key does not open this sealed object: the wrong key, or its header was tampered with
    (the two cannot be told apart by design)."""


class Unavailable(TdxflError):
    """A peer (parameter server, key broker) could not be reached within the retries."""


class LinkError(TdxflError):
    """An established connection broke: closed, reset, timed out, refused by the peer, or the peer
    broke the protocol."""


class RecordError(TdxflError):
    """A tensor set does not match what was expected (names, dtypes, shapes or values): an update
    that is refused, or a model that does not fit."""


class TaskError(TdxflError):
    """The user's task code failed or broke the task contract; the message names the party, the
    task and the function."""


class FederationError(TdxflError):
    """Training cannot go on (fewer live workers than the quorum, a refused Join, a failed PS);
    the message says why."""
