"""The audit log's hash chain: every edit, deletion, insertion and reordering is caught, by line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tdxfl.errors import SealedFileError
from tdxfl.keybroker.audit import GENESIS, AuditChainError, AuditLog, verify_chain

MAC_KEY = os.urandom(32)


def write_log(path: Path, n: int = 5, mac_key: bytes | None = MAC_KEY) -> list[bytes]:
    log = AuditLog(path, mac_key=mac_key)
    for i in range(n):
        log.append(
            party=f"worker-{i}",
            role="worker",
            cert_fingerprint="ab" * 32,
            key="model",
            decision="released" if i % 2 == 0 else "refused",
            reason=f"reason {i}",
        )
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def broken_line(path: Path, mac_key: bytes | None = MAC_KEY) -> AuditChainError:
    with pytest.raises(AuditChainError) as err:
        verify_chain(path, mac_key)
    return err.value


def test_intact_chain_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    status = verify_chain(path, MAC_KEY)
    assert status.entries == 5 and status.macs_checked
    assert status.head == json.loads(lines[-1])["hash"]
    assert json.loads(lines[0])["prev"] == GENESIS
    assert all(json.loads(lines[i])["prev"] == json.loads(lines[i - 1])["hash"] for i in range(1, 5))
    assert verify_chain(tmp_path / "missing.jsonl").entries == 0


def test_reopened_log_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    AuditLog(path, mac_key=MAC_KEY).append(
        party="ps", role="ps", cert_fingerprint="", key="model", decision="released", reason="again"
    )
    assert verify_chain(path, MAC_KEY).entries == 3


@pytest.mark.parametrize("index", [0, 2, 4])
def test_edited_line_is_named(tmp_path: Path, index: int) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    before = json.loads(lines[index])["decision"]
    flipped = lines[index].replace(b'"released"', b'"REFUSED"').replace(b'"refused"', b'"released"')
    lines[index] = flipped.replace(b'"REFUSED"', b'"refused"')
    assert json.loads(lines[index])["decision"] != before
    rewrite(path, lines)
    err = broken_line(path)
    assert err.line == index + 1 and "edited" in err.reason


def test_edited_line_with_recomputed_hash_breaks_the_next_line(tmp_path: Path) -> None:
    """An editor who fixes the entry's own hash still breaks the chain (and the MAC)."""
    from tdxfl.keybroker.audit import _entry_hash

    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    entry = json.loads(lines[1])
    entry["party"] = "someone-else"
    entry["hash"] = _entry_hash(entry)
    lines[1] = json.dumps(entry).encode() + b"\n"
    rewrite(path, lines)
    assert broken_line(path, None).line == 3  # no MAC key: the next entry's prev no longer matches
    err = broken_line(path)
    assert err.line == 2 and "MAC" in err.reason


@pytest.mark.parametrize("index", [0, 2])
def test_deleted_line_is_detected(tmp_path: Path, index: int) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    del lines[index]
    rewrite(path, lines)
    err = broken_line(path)
    assert err.line == index + 1 and "deleted" in err.reason


def test_reordered_and_inserted_lines_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    rewrite(path, [lines[0], lines[2], lines[1], *lines[3:]])
    assert broken_line(path).line == 2
    rewrite(path, [*lines[:3], lines[1], *lines[3:]])
    assert broken_line(path).line == 4
    rewrite(path, [*lines[:4], lines[4][:-20]])
    err = broken_line(path)
    assert err.line == 5 and "incomplete" in err.reason


def test_chain_rebuilt_without_the_mac_key_is_refused(tmp_path: Path) -> None:
    forged = tmp_path / "forged.jsonl"
    write_log(forged, 3, mac_key=os.urandom(32))
    assert verify_chain(forged, None).entries == 3  # a self-consistent chain ...
    err = broken_line(forged)  # ... that the broker's audit key did not sign
    assert err.line == 1 and "MAC" in err.reason


def test_broker_refuses_to_extend_a_broken_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = write_log(path)
    rewrite(path, lines[1:])
    with pytest.raises(AuditChainError, match="line 1") as info:
        AuditLog(path, mac_key=MAC_KEY)
    assert isinstance(info.value, SealedFileError) and info.value.line == 1


def test_log_is_private_and_holds_no_key_field(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 1)
    assert path.stat().st_mode & 0o077 == 0
    entry = json.loads(path.read_bytes())
    assert set(entry) == {
        "seq",
        "time",
        "prev",
        "party",
        "role",
        "cert_fingerprint",
        "key",
        "decision",
        "reason",
        "tee",
        "mrtd",
        "rtmrs",
        "debug",
        "hash",
        "mac",
    }
