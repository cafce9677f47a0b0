"""The ``tdxfl`` exit statuses: one map from error class to exit code, and the helper applying it.

====  ===========================================================================================
code  outcome
====  ===========================================================================================
0     success
1     any other ``TdxflError`` (e.g. ``RecordError``, a program this machine lacks): failure
2     ``ConfigError``: an invalid configuration or setting (click's usage errors exit 2 as well)
3     ``AttestationError``, ``AttestationRefused``: evidence not genuine, or refused by policy
4     ``KeyRefused``: the key broker refused to release a key
5     ``SealedFileError``, ``WrongKey``: a sealed file, keystore, volume or audit log cannot be
      opened (tampered, truncated, absent, or the wrong key)
6     ``Unavailable``, ``LinkError``: a peer could not be reached, or a connection broke
7     ``FederationError``: training cannot go on
130   ``KeyboardInterrupt``: interrupted (Ctrl-C)
====  ===========================================================================================

A subclass gets the code of its nearest listed base (``AuditChainError`` is a ``SealedFileError``:
5). Exceptions that are not ``TdxflError`` are bugs: they are not caught and stay tracebacks.

Commands wrap their work in :func:`handle_errors`, which prints the error as one line,
``<prog>: <message>``, on stderr and exits with the mapped code. Commands whose output is a
verdict (``tdxfl verify-quote``, ``tdxfl keybroker verify-audit``) print the verdict themselves
and exit with the code of the refusal's class.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import NoReturn

import click

from tdxfl.errors import (
    AttestationError,
    AttestationRefused,
    ConfigError,
    FederationError,
    KeyRefused,
    LinkError,
    SealedFileError,
    TdxflError,
    Unavailable,
    WrongKey,
)

__all__ = ["EXIT_CODES", "EXIT_OK", "exit_code", "exit_status_summary", "handle_errors", "one_line"]

EXIT_OK = 0
#: the exit code of each error class (a subclass takes its nearest listed base's code)
EXIT_CODES: Mapping[type[BaseException], int] = MappingProxyType(
    {
        TdxflError: 1,
        ConfigError: 2,
        AttestationError: 3,
        AttestationRefused: 3,
        KeyRefused: 4,
        SealedFileError: 5,
        WrongKey: 5,
        Unavailable: 6,
        LinkError: 6,
        FederationError: 7,
        KeyboardInterrupt: 130,
    }
)
_GENERIC_FAILURE = EXIT_CODES[TdxflError]
# every character that a terminal or log reader may take for the end of a line
_LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode("ascii") for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def exit_code(error: BaseException) -> int:
    """The exit code for ``error``: that of the first class in its MRO listed in ``EXIT_CODES``,
    else 1 (generic failure)."""
    for cls in type(error).__mro__:
        code = EXIT_CODES.get(cls)
        if code is not None:
            return code
    return _GENERIC_FAILURE


def exit_status_summary() -> str:
    """The map as one sentence for ``--help``: ``"0 success; 1 TdxflError; 2 ConfigError; ..."``."""
    names: dict[int, list[str]] = {}
    for cls, code in EXIT_CODES.items():
        names.setdefault(code, []).append(cls.__name__)
    return "; ".join([f"{EXIT_OK} success"] + [f"{code} {', '.join(names[code])}" for code in sorted(names)])


def one_line(message: str) -> str:
    """``message`` with its line breaks escaped (``\\n``, ``\\r``, ...), so that it prints as one line."""
    return message.translate(_LINE_BREAKS)


def _fail(prog: str, message: str, code: int) -> NoReturn:
    click.echo(f"{prog}: {one_line(message)}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def handle_errors(prog: str) -> Iterator[None]:
    """Run the ``with`` block (or the decorated function); turn tdxfl's errors into an exit.

    A ``TdxflError`` prints ``f"{prog}: {message}"`` as one line on stderr and exits with its
    :func:`exit_code`; ``KeyboardInterrupt`` prints ``f"{prog}: interrupted"`` and exits 130.
    Anything else (click's own exceptions, ``SystemExit``, bugs) passes through unchanged.
    """
    try:
        yield
    except KeyboardInterrupt:
        _fail(prog, "interrupted", EXIT_CODES[KeyboardInterrupt])
    except TdxflError as e:
        _fail(prog, str(e) or type(e).__name__, exit_code(e))
