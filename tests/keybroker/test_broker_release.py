"""Key release over real gRPC (mutual RA-TLS on 127.0.0.1) between simulated TDs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from fedtools import free_port
from kb_support import GOOD, OTHER, Running
from tdxfl.attestation.insecure_simulated import SimulatedAttester
from tdxfl.errors import KeyRefused, Unavailable
from tdxfl.keybroker.audit import verify_chain
from tdxfl.keybroker.client import fetch_key
from tdxfl.transport.attested import AttestationRefused


def fetch(running: Running, party: str, role: str, attester: SimulatedAttester, key: str = "model") -> bytes:
    return fetch_key(
        party,
        role,
        attester,
        running.broker_verifier(party),
        key,
        running.address,
        running.enroll_address,
        retries=0,
        timeout=10.0,
    )


def audit_entries(running: Running) -> list[dict[str, object]]:
    return [json.loads(line) for line in running.broker.config.audit_log.read_text().splitlines()]


def test_key_released_to_td_meeting_its_policy(broker: Running, td: Callable[..., SimulatedAttester]) -> None:
    assert fetch(broker, "ps", "ps", td()) == broker.keystore.get("model").key
    assert fetch(broker, "worker-1", "worker", td()) == broker.keystore.get("model").key
    assert fetch(broker, "ps", "ps", td(), "ps-only") == broker.keystore.get("ps-only").key
    entries = audit_entries(broker)
    assert [e["decision"] for e in entries] == ["released"] * 3
    first = entries[0]
    assert first["party"] == "ps" and first["role"] == "ps" and first["key"] == "model"
    assert first["mrtd"] == GOOD.hex() and first["tee"] == "simulated" and first["debug"] is False
    assert len(first["rtmrs"]) == 4 and len(first["cert_fingerprint"]) == 64  # type: ignore[arg-type]
    status = verify_chain(broker.broker.config.audit_log, broker.keystore.audit_mac_key())
    assert status.entries == 3 and status.macs_checked
    released = [d for d in broker.broker.decisions.decisions if d.verifier == "keybroker/release:model"]
    assert released and all(d.accepted for d in released)


@pytest.mark.parametrize(
    "party,role,mrtd,debug,key,needle",
    [
        ("worker-2", "worker", OTHER, False, "model", "MRTD"),
        ("worker-1", "worker", GOOD, True, "model", "DEBUG"),
        ("worker-1", "worker", GOOD, False, "ps-only", "role 'worker' may not fetch key 'ps-only'"),
        ("ps", "ps", GOOD, False, "tdx-only", "simulated evidence proves nothing"),
        ("ps", "ps", GOOD, False, "no-such-key", "no key named 'no-such-key'"),
    ],
    ids=["mrtd-not-in-key-policy", "debug-td", "role-not-allowed", "simulated-under-tdx-policy", "unknown-key"],
)
def test_key_refused_with_reason_and_audit_entry(
    broker: Running,
    td: Callable[..., SimulatedAttester],
    party: str,
    role: str,
    mrtd: bytes,
    debug: bool,
    key: str,
    needle: str,
) -> None:
    with pytest.raises(KeyRefused) as err:
        fetch(broker, party, role, td(mrtd, debug), key)
    assert needle in err.value.reason and err.value.key_name == key
    assert not isinstance(err.value, OSError)  # a refusal is final: no OSError handler retries it
    [entry] = audit_entries(broker)
    assert entry["decision"] == "refused" and needle in str(entry["reason"])
    assert entry["party"] == party and entry["role"] == role and entry["key"] == key
    # Measurements are recorded even for refusals (read from the genuine quote).
    assert entry["mrtd"] == mrtd.hex() and entry["debug"] is debug
    verdicts = [d for d in broker.broker.decisions.decisions if d.verifier == f"keybroker/release:{key}"]
    assert len(verdicts) == 1 and not verdicts[0].accepted and needle in verdicts[0].reason


def test_party_outside_enrollment_table_never_reaches_the_service(
    broker: Running, td: Callable[..., SimulatedAttester]
) -> None:
    with pytest.raises(AttestationRefused, match="may not enroll"):
        fetch(broker, "mallory", "ps", td())
    with pytest.raises(AttestationRefused, match="may not enroll"):
        fetch(broker, "worker-1", "ps", td())  # a worker claiming the ps role
    assert not broker.broker.config.audit_log.exists() or not audit_entries(broker)
    assert any(not d.accepted and d.peer == "mallory" for d in broker.broker.decisions.decisions)


def test_client_refuses_a_broker_with_unexpected_measurements(
    broker: Running, td: Callable[..., SimulatedAttester]
) -> None:
    from kb_support import sim_policy
    from tdxfl.attestation.decisions import DecisionLog
    from tdxfl.attestation.insecure_simulated import SimulatedVerifier
    from tdxfl.attestation.ratls import PeerVerifier

    wrong = PeerVerifier("ps", sim_policy(OTHER), [SimulatedVerifier()], DecisionLog())
    with pytest.raises(AttestationRefused, match="we refused keybroker"):
        fetch_key("ps", "ps", td(), wrong, "model", broker.address, broker.enroll_address, retries=0)


def test_unreachable_broker_retries_then_fails(td: Callable[..., SimulatedAttester]) -> None:
    from kb_support import sim_policy
    from tdxfl.attestation.decisions import DecisionLog
    from tdxfl.attestation.insecure_simulated import SimulatedVerifier
    from tdxfl.attestation.ratls import PeerVerifier

    v = PeerVerifier("ps", sim_policy(GOOD), [SimulatedVerifier()], DecisionLog())
    a, e = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    with pytest.raises(Unavailable, match="after 3 attempts"):
        fetch_key("ps", "ps", td(), v, "model", a, e, retries=2, backoff_s=0.01, timeout=2.0)


def test_no_key_material_left_in_any_file_or_log(
    broker: Running, td: Callable[..., SimulatedAttester], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fetch(broker, "ps", "ps", td())
    fetch(broker, "worker-1", "worker", td())
    for party, mrtd, key in (("worker-2", OTHER, "model"), ("worker-1", GOOD, "ps-only")):
        with pytest.raises(KeyRefused):
            fetch(broker, party, "worker", td(mrtd), key)
    broker.broker.stop(grace=None)
    secrets = [broker.keystore.get(n).key for n in ("model", "ps-only", "tdx-only")]
    secrets.append(broker.keystore.audit_mac_key())
    needles = [n for s in secrets for n in (s, s.hex().encode(), s.hex().upper().encode())]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "audit.jsonl" for p in files) and any(p.name == "keystore" for p in files)
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"key material found in {path}"
    text = caplog.text.encode()
    assert not any(n in text for n in needles), "key material found in the logs"
