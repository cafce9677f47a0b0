"""The task claim and the RTMR3 event log in RA-TLS evidence: encoding, bounds, policy, replay."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cbor2
import pytest

from tdxfl.attestation.decisions import Decision, DecisionLog
from tdxfl.attestation.eventlog import MAX_RTMR3_EVENTS, extend
from tdxfl.attestation.evidence import Claims, TaggedEvidence
from tdxfl.attestation.insecure_simulated import SimulatedAttester, SimulatedTd, SimulatedVerifier
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import PeerVerifier, TlsIdentity, certificate_evidence, make_evidence
from tdxfl.errors import AttestationError, ConfigError

MRTD = bytes([0x11]) * 48
TASK = bytes.fromhex("ab" * 48)
OTHER_TASK = bytes.fromhex("cd" * 48)
SPKI = b"a public key"
ZERO = bytes(48)


def sim_policy(**table: object) -> Policy:
    return Policy.from_dict({"tee": ["simulated"], "mrtd": [MRTD.hex()], **table})


def peer_verifier(policy: Policy, decisions: DecisionLog | None = None) -> PeerVerifier:
    return PeerVerifier("ps", policy, [SimulatedVerifier()], decisions or DecisionLog())


def attester(task: bytes | None = None, rtmr3: bytes = ZERO) -> SimulatedAttester:
    a = SimulatedAttester(SimulatedTd(mrtd=MRTD, rtmrs=(ZERO, ZERO, ZERO, rtmr3)))
    if task is not None:
        a.extend_rtmr3(task)
    return a


# -- claims ------------------------------------------------------------------------------------
def test_claims_without_a_task_encode_as_before() -> None:
    plain = Claims.for_public_key(SPKI, b"n" * 32)
    expected = {"pubkey-hash": cbor2.dumps([7, plain.pubkey_hash]), "nonce": b"n" * 32}
    assert plain.encode() == cbor2.dumps(expected, canonical=True)
    assert set(cbor2.loads(plain.encode())) == {"pubkey-hash", "nonce"}


def test_claims_with_task_and_log_round_trip() -> None:
    claims = Claims.for_public_key(SPKI, b"n" * 32, task=TASK, rtmr3_log=(TASK,))
    m = cbor2.loads(claims.encode())
    assert (m["task"], m["rtmr3-log"]) == (TASK, [TASK])
    assert Claims.decode(claims.encode()) == claims


@pytest.mark.parametrize(
    ("entries", "needle"),
    [
        ({"task": b"short"}, "'task' must be a 48-byte string"),
        ({"task": "ab" * 48}, "'task' must be a 48-byte string"),
        ({"rtmr3-log": []}, "list of 1 to 64 events"),
        ({"rtmr3-log": TASK}, "list of 1 to 64 events"),
        ({"rtmr3-log": [TASK[:47]]}, "events must be 48-byte strings"),
        ({"rtmr3-log": [TASK] * (MAX_RTMR3_EVENTS + 1)}, "list of 1 to 64 events"),
    ],
)
def test_malformed_task_entries_are_refused(entries: dict[str, object], needle: str) -> None:
    base = cbor2.loads(Claims.for_public_key(SPKI).encode())
    with pytest.raises(AttestationError, match=needle):
        Claims.decode(cbor2.dumps({**base, **entries}, canonical=True))


def test_oversized_claims_and_evidence_are_refused_before_decoding() -> None:
    base = cbor2.loads(Claims.for_public_key(SPKI).encode())
    huge = cbor2.dumps({**base, "rtmr3-log": [TASK] * 1000})
    with pytest.raises(AttestationError, match=r"claims are \d+ bytes, more than the \d+ accepted"):
        Claims.decode(huge)
    with pytest.raises(AttestationError, match=r"evidence extension is \d+ bytes, more than"):
        TaggedEvidence.decode(TaggedEvidence(1, bytes(70_000), b"").encode())


def test_a_full_log_still_fits_the_claims_bound() -> None:
    claims = Claims.for_public_key(SPKI, bytes(64), task=TASK, rtmr3_log=(TASK,) * MAX_RTMR3_EVENTS)
    assert Claims.decode(claims.encode()) == claims


# -- the simulated TD measures the task into RTMR3 ---------------------------------------------
def test_simulated_td_extends_rtmr3_and_logs_it() -> None:
    a = attester(TASK)
    assert a.td.rtmrs[3] == extend(ZERO, TASK) and a.rtmr3_log == (TASK,)
    claims = certificate_evidence(TlsIdentity.create(a, "w", task_digest=TASK).certificate).parsed_claims()
    assert (claims.task, claims.rtmr3_log) == (TASK, (TASK,))


def test_simulated_td_with_a_foreign_rtmr3_carries_no_log(caplog: pytest.LogCaptureFixture) -> None:
    foreign = bytes([0x13]) * 48
    with caplog.at_level(logging.WARNING):
        a = attester(TASK, rtmr3=foreign)
    assert a.td.rtmrs[3] == foreign and a.rtmr3_log is None
    assert "not zero: not extending it" in caplog.text
    claims = Claims.decode(make_evidence(a, SPKI, None, TASK).claims)
    assert (claims.task, claims.rtmr3_log) == (TASK, None)


# -- verification ------------------------------------------------------------------------------
def test_task_and_replayed_log_are_in_the_verified_evidence_and_the_decision() -> None:
    identity = TlsIdentity.create(attester(TASK), "worker-1", task_digest=TASK)
    appraisal = peer_verifier(sim_policy(task=[TASK.hex()])).appraise("worker-1", certificate=identity.cert_pem)
    assert appraisal.decision.accepted, appraisal.decision.reason
    assert appraisal.evidence is not None
    assert (appraisal.evidence.task, appraisal.evidence.rtmr3_log) == (TASK, (TASK,))
    assert appraisal.decision.task == TASK.hex()


def test_fresh_evidence_claims_the_identity_task() -> None:
    a = attester(TASK)
    identity = TlsIdentity.create(a, "ps", task_digest=TASK)
    fresh = TaggedEvidence.decode(identity.fresh_evidence(a, b"c" * 32)).parsed_claims()
    assert (fresh.task, fresh.nonce, fresh.rtmr3_log) == (TASK, b"c" * 32, (TASK,))


def test_other_task_is_refused_naming_both_digests() -> None:
    identity = TlsIdentity.create(attester(OTHER_TASK), "worker-1", task_digest=OTHER_TASK)
    d = peer_verifier(sim_policy(task=[TASK.hex()])).appraise("worker-1", certificate=identity.cert_pem).decision
    assert not d.accepted
    assert f"TASK {OTHER_TASK.hex()} is not allowed (policy allows: {TASK.hex()})" in d.reason
    assert d.task == OTHER_TASK.hex()


def test_no_task_claimed_is_refused_by_a_task_policy() -> None:
    identity = TlsIdentity.create(attester(), "worker-1")
    d = peer_verifier(sim_policy(task=[TASK.hex()])).appraise("worker-1", certificate=identity.cert_pem).decision
    assert not d.accepted and f"the evidence claims no task digest (policy allows: {TASK.hex()})" in d.reason
    assert d.task == ""


def test_task_claimed_without_a_log_is_accepted_by_the_claim_alone() -> None:
    a = attester(TASK, rtmr3=bytes([0x13]) * 48)  # RTMR3 not extensible from zeros: no log
    identity = TlsIdentity.create(a, "worker-1", task_digest=TASK)
    appraisal = peer_verifier(sim_policy(task=[TASK.hex()])).appraise("worker-1", certificate=identity.cert_pem)
    assert appraisal.decision.accepted and appraisal.evidence is not None
    assert (appraisal.evidence.task, appraisal.evidence.rtmr3_log) == (TASK, None)


class LyingAttester(SimulatedAttester):
    """A simulated TD that claims an RTMR3 event log of its choosing."""

    def __init__(self, td: SimulatedTd, claimed_log: tuple[bytes, ...]) -> None:
        super().__init__(td)
        self.claimed_log = claimed_log

    @property
    def rtmr3_log(self) -> tuple[bytes, ...] | None:
        return self.claimed_log


def _evidence_with_log(log: tuple[bytes, ...], task: bytes | None, rtmr3: bytes) -> TaggedEvidence:
    """Evidence whose claims carry ``log``, quoted by a simulated TD whose RTMR3 is ``rtmr3``."""
    td = SimulatedTd(mrtd=MRTD, rtmrs=(ZERO, ZERO, ZERO, rtmr3))
    return make_evidence(LyingAttester(td, log), SPKI, None, task)


def test_tampered_log_is_refused() -> None:
    evidence = _evidence_with_log((OTHER_TASK,), OTHER_TASK, extend(ZERO, TASK))
    with pytest.raises(AttestationError, match="RTMR3 event log does not replay to the quoted RTMR3"):
        peer_verifier(sim_policy()).verify_genuine(evidence, SPKI)


def test_log_short_of_the_quoted_rtmr3_is_refused() -> None:
    evidence = _evidence_with_log((TASK,), TASK, extend(extend(ZERO, TASK), OTHER_TASK))
    with pytest.raises(AttestationError, match="extended by something that did not log it"):
        peer_verifier(sim_policy()).verify_genuine(evidence, SPKI)


def test_claimed_task_that_is_not_the_last_event_is_refused() -> None:
    evidence = _evidence_with_log((TASK, OTHER_TASK), TASK, extend(extend(ZERO, TASK), OTHER_TASK))
    with pytest.raises(AttestationError, match="is not the last RTMR3 event"):
        peer_verifier(sim_policy()).verify_genuine(evidence, SPKI)


def test_replay_refusal_is_recorded_with_the_reason() -> None:
    a = attester(TASK)
    a.td = SimulatedTd(mrtd=MRTD, rtmrs=(ZERO, ZERO, ZERO, extend(a.td.rtmrs[3], OTHER_TASK)))  # extended, unlogged
    identity = TlsIdentity.create(a, "worker-1", task_digest=TASK)
    d = peer_verifier(sim_policy()).appraise("worker-1", certificate=identity.cert_pem).decision
    assert not d.accepted and "does not replay to the quoted RTMR3" in d.reason


# -- policy ------------------------------------------------------------------------------------
def test_task_policy_parses_and_writes_back() -> None:
    policy = sim_policy(task=[TASK.hex(), OTHER_TASK.hex()])
    assert policy.task == frozenset({TASK, OTHER_TASK})
    assert Policy.from_dict(policy.to_dict()) == policy
    assert policy.to_dict()["task"] == sorted([TASK.hex(), OTHER_TASK.hex()])
    assert sim_policy(task="any").task is None and sim_policy().task is None
    assert "task" not in sim_policy().to_dict()  # unpinned: written exactly as before the key existed


@pytest.mark.parametrize(
    ("raw", "needle"), [("ab" * 32, "is 32 bytes, expected 48"), (["zz"], "not hex"), (7, "must be")]
)
def test_malformed_task_policy_is_a_config_error(raw: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        sim_policy(task=raw)


def test_task_policy_listing_none_refuses_everyone() -> None:
    identity = TlsIdentity.create(attester(TASK), "worker-1", task_digest=TASK)
    d = peer_verifier(sim_policy(task=[])).appraise("worker-1", certificate=identity.cert_pem).decision
    assert not d.accepted and "policy allows: nothing (policy lists none)" in d.reason


# -- decision log ------------------------------------------------------------------------------
def test_decision_log_records_the_task_and_escapes_peer_text(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = DecisionLog(tmp_path / "attestation.jsonl")
    with caplog.at_level(logging.INFO, logger="tdxfl.attestation"):
        log.record(
            Decision("ps", "evil\nattestation accepted: ps judged root", "refused", "bad\x1b[2J", task=TASK.hex())
        )
    (line,) = [r.getMessage() for r in caplog.records if r.name == "tdxfl.attestation"]
    assert "\n" not in line and "\x1b" not in line
    assert "evil\\nattestation accepted" in line and "bad\\x1b[2J" in line and f"task={TASK.hex()[:16]}" in line
    (stored,) = DecisionLog.read(tmp_path / "attestation.jsonl")
    assert stored.task == TASK.hex() and stored.peer.startswith("evil\n")
    raw = (tmp_path / "attestation.jsonl").read_text()
    assert raw.count("\n") == 1 and json.loads(raw)["task"] == TASK.hex()


def test_decisions_written_before_the_task_field_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    old = {"verifier": "ps", "peer": "w", "result": "accepted", "reason": "ok", "tee": "tdx", "mrtd": "00", "time": 1.0}
    path.write_text(json.dumps(old) + "\n")
    (d,) = DecisionLog.read(path)
    assert d.task == "" and d.accepted
