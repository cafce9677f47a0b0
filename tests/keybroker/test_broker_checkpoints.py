"""Checkpoint records at the key broker (rollback protection), over real gRPC between simulated TDs.

Only the parameter server records and looks up; records only move forward; they are durable in
the audit log and come back when the broker restarts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import pytest

from kb_support import GOOD, Running, broker_doc, start_broker
from tdxfl.attestation.insecure_simulated import SimulatedAttester, SimulatedTd
from tdxfl.errors import ConfigError, KeyRefused
from tdxfl.keybroker.audit import verify_chain
from tdxfl.keybroker.client import CheckpointRefused
from tdxfl.keybroker.keystore import Keystore
from tdxfl.store.rollback import CheckpointRecord
from tdxfl.transport.attested import connect
from tdxfl.transport.proto import keybroker_pb2 as kb
from tdxfl.transport.proto import keybroker_pb2_grpc as kb_grpc

RUN = "run-2025-07-19T10-00-34-5f3a"


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def checkpoint_entries(running: Running) -> list[dict[str, object]]:
    path = running.broker.config.audit_log
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e.get("event") == "checkpoint"]


def test_ps_records_and_reads_back_the_latest(broker: Running) -> None:
    with broker.client() as ps:
        assert ps.latest_checkpoint(RUN) is None
        first = ps.record_checkpoint(RUN, 1, digest("round 1"))
        second = ps.record_checkpoint(RUN, 3, digest("round 3"))
        assert first.audit_seq is not None and second.audit_seq == first.audit_seq + 1
        latest = ps.latest_checkpoint(RUN)
        assert latest == CheckpointRecord(RUN, 3, digest("round 3")) and latest.audit_seq == second.audit_seq
        assert ps.latest_checkpoint("another-run") is None
    entries = checkpoint_entries(broker)
    assert [(e["round"], e["decision"], e["party"], e["role"]) for e in entries] == [
        (1, "recorded", "ps", "ps"),
        (3, "recorded", "ps", "ps"),
    ]
    assert entries[1]["sha256"] == digest("round 3").hex() and entries[1]["run_id"] == RUN
    status = verify_chain(broker.broker.config.audit_log, broker.keystore.audit_mac_key())
    assert status.entries >= 2 and status.macs_checked


def test_a_lower_round_or_another_digest_is_refused_and_audited(broker: Running) -> None:
    with broker.client() as ps:
        ps.record_checkpoint(RUN, 5, digest("round 5"))
        with pytest.raises(CheckpointRefused) as older:
            ps.record_checkpoint(RUN, 4, digest("round 4"))
        assert "round 4 is older than round 5" in str(older.value) and older.value.run_id == RUN
        assert isinstance(older.value, KeyRefused) and str(older.value).count("\n") == 0
        with pytest.raises(CheckpointRefused, match="round 5 is already recorded with sha256"):
            ps.record_checkpoint(RUN, 5, digest("forged round 5"))
        again = ps.record_checkpoint(RUN, 5, digest("round 5"))  # a retried report: not refused
        assert ps.latest_checkpoint(RUN) == CheckpointRecord(RUN, 5, digest("round 5"))
        assert again.audit_seq == ps.latest_checkpoint(RUN).audit_seq  # type: ignore[union-attr]
    assert [(e["round"], e["decision"]) for e in checkpoint_entries(broker)] == [
        (5, "recorded"),
        (4, "refused"),
        (5, "refused"),
    ]


def test_a_worker_can_neither_record_nor_look_up(broker: Running) -> None:
    with broker.client("worker-1", "worker") as worker:
        with pytest.raises(CheckpointRefused, match="PERMISSION_DENIED.*role 'worker' may not record checkpoints"):
            worker.record_checkpoint(RUN, 9, digest("poison"))
        with pytest.raises(CheckpointRefused, match="PERMISSION_DENIED.*role 'worker' may not look up"):
            worker.latest_checkpoint(RUN)
    with broker.client() as ps:
        assert ps.latest_checkpoint(RUN) is None  # the worker's attempt recorded nothing
        ps.record_checkpoint(RUN, 1, digest("round 1"))  # and blocks nothing
    [refused, recorded] = checkpoint_entries(broker)
    assert refused["decision"] == "refused" and refused["party"] == "worker-1" and refused["round"] == 9
    assert recorded["decision"] == "recorded" and recorded["party"] == "ps"


def test_records_survive_a_broker_restart(tmp_path: Path, keystore: Keystore) -> None:
    running = start_broker(tmp_path, keystore)
    ps = running.client(retries=20, backoff_s=0.05)
    try:
        ps.record_checkpoint(RUN, 2, digest("round 2"))
        ps.record_checkpoint(RUN, 4, digest("round 4"))
        address, enroll = running.address, running.enroll_address
        running.broker.stop(grace=None)
        # The same ports again: the client's session is gone with the old broker; it re-attests.
        restarted = start_broker(tmp_path, keystore, broker_doc(address, enroll))
        try:
            assert ps.latest_checkpoint(RUN) == CheckpointRecord(RUN, 4, digest("round 4"))
            with pytest.raises(CheckpointRefused, match="round 3 is older than round 4"):
                ps.record_checkpoint(RUN, 3, digest("round 3"))
            ps.record_checkpoint(RUN, 6, digest("round 6"))
        finally:
            restarted.broker.stop(grace=None)
    finally:
        ps.close()
    again = start_broker(tmp_path, keystore)
    try:
        with again.client() as fresh:
            assert fresh.latest_checkpoint(RUN) == CheckpointRecord(RUN, 6, digest("round 6"))
    finally:
        again.broker.stop(grace=None)


def test_records_are_kept_per_parameter_server(tmp_path: Path, keystore: Keystore) -> None:
    doc = broker_doc()
    doc["enroll"]["ps-b"] = "ps"
    running = start_broker(tmp_path, keystore, doc)
    try:
        with running.client() as ps_a, running.client("ps-b") as ps_b:
            ps_a.record_checkpoint(RUN, 7, digest("a 7"))
            assert ps_b.latest_checkpoint(RUN) is None  # another federation's PS sees nothing ...
            ps_b.record_checkpoint(RUN, 1, digest("b 1"))  # ... and cannot move ps's record
            assert ps_a.latest_checkpoint(RUN) == CheckpointRecord(RUN, 7, digest("a 7"))
    finally:
        running.broker.stop(grace=None)


def test_invalid_records_are_refused_before_anything_is_written(broker: Running) -> None:
    with broker.client() as ps:
        with pytest.raises(ConfigError, match="invalid run id"):
            ps.record_checkpoint("run\nforged line", 1, digest("x"))
        with pytest.raises(ConfigError, match="32 bytes"):
            ps.record_checkpoint(RUN, 1, b"short")
        with pytest.raises(ConfigError, match="round must be"):
            ps.record_checkpoint(RUN, -1, digest("x"))
    # A peer that skips the client's checks is refused by the broker.
    attester = SimulatedAttester(SimulatedTd(mrtd=GOOD))
    channel = connect(
        "ps", "ps", attester, broker.broker_verifier("ps"), "keybroker", broker.address, broker.enroll_address
    )
    try:
        stub = kb_grpc.KeyBrokerStub(channel.channel)
        for bad in (
            kb.CheckpointRecord(run_id=RUN, round=1, sha256=b"\x00" * 31),
            kb.CheckpointRecord(run_id="x" * 10_000, round=1, sha256=b"\x00" * 32),
            kb.CheckpointRecord(run_id=RUN, round=1 << 60, sha256=b"\x00" * 32),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.RecordCheckpoint(bad, timeout=10)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            stub.LatestCheckpoint(kb.LatestCheckpointRequest(run_id="../x"), timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        channel.close()
    assert checkpoint_entries(broker) == []
