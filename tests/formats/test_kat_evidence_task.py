"""Known-answer vectors for RA-TLS claims that carry a task digest and an RTMR3 event log.

``test_kat_evidence.py`` pins the claims without these entries (they must stay byte for byte as
they were); this file pins the two optional entries (README "Evidence format"): ``"task"``, a
48-byte bstr, and ``"rtmr3-log"``, an array of 48-byte bstr events, in the canonical CBOR map
(keys ordered shorter first: ``"task"``, ``"nonce"``, ``"rtmr3-log"``, ``"pubkey-hash"``). The
expected bytes are spelled out here, not taken from tdxfl's constants; the simulated quotes
around them are deterministic (Ed25519), so the whole evidence is pinned by its SHA-256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.evidence import Claims, TaggedEvidence
from tdxfl.attestation.insecure_simulated import SimulatedAttester, SimulatedTd, SimulatedVerifier
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import PeerVerifier, certificate_spki, load_certificate, make_evidence
from tdxfl.attestation.report import parse_quote

KAT = Path(__file__).resolve().parents[2] / "tests" / "data" / "kat"
SIM_CERT = KAT / "ratls-simulated.der"  # only its (fixed) public key is used here
SPKI_SHA384 = bytes.fromhex(
    "d81716e78f521dfe62d28f7cb6f17a927c28d818ac26d71aaab9bf21cf0a2b6acd43d095a8c0de2a31b1920fa9ff0103"
)
TASK = bytes(range(0x80, 0xB0))
NONCE = bytes.fromhex("c0ffee00") * 8
TD = SimulatedTd(
    mrtd=bytes(range(48)),
    rtmrs=(bytes([0x10]) * 48, bytes([0x11]) * 48, bytes([0x12]) * 48, bytes(48)),
    mrconfigid=bytes([0x20]) * 48,
    mrowner=bytes([0x30]) * 48,
)
#: RTMR3 after extending zeros with TASK: SHA-384(48 zero bytes || TASK)
RTMR3_WITH_TASK = bytes.fromhex(
    "6a4fef1f830e5c8ee8a9f2cbbbb0e6ec9250eaf6280571de58e62b045f1dc9ac12659b0f1ed2e59cf523546eb64e72c7"
)

_PUBKEY_HASH = b"\x6bpubkey-hash" + b"\x58\x34" + b"\x82\x07\x58\x30" + SPKI_SHA384
_TASK = b"\x64task" + b"\x58\x30" + TASK
#: certificate claims of a party on an old kernel: the task, no nonce, no log
CLAIMS_TASK = b"\xa2" + _TASK + _PUBKEY_HASH
#: fresh evidence of a party that extended RTMR3: task, nonce, a one-event log, key
CLAIMS_TASK_LOG = (
    b"\xa4" + _TASK + b"\x65nonce" + b"\x58\x20" + NONCE + b"\x69rtmr3-log" + b"\x81\x58\x30" + TASK + _PUBKEY_HASH
)
EVIDENCE_SHA256 = {
    "task": "5c40e56e8b695823b7b000e6a0105a3409bd1d065e27452b4476819c7fdda400",
    "task+log": "c09ce2362a30c6bdd3cd37113e2dce8184260fe60628aee8152612e57a7a5b3b",
}


def _spki() -> bytes:
    return certificate_spki(load_certificate(SIM_CERT.read_bytes()))


def _vectors() -> dict[str, bytes]:
    attester = SimulatedAttester(TD)
    task_only = make_evidence(attester, _spki(), None, TASK).encode()
    attester.extend_rtmr3(TASK)
    return {"task": task_only, "task+log": make_evidence(attester, _spki(), NONCE, TASK).encode()}


def test_claims_with_a_task_are_the_documented_bytes() -> None:
    assert hashlib.sha384(_spki()).digest() == SPKI_SHA384
    assert Claims.for_public_key(_spki(), task=TASK).encode() == CLAIMS_TASK
    assert Claims.for_public_key(_spki(), NONCE, task=TASK, rtmr3_log=(TASK,)).encode() == CLAIMS_TASK_LOG
    assert Claims.decode(CLAIMS_TASK_LOG) == Claims(7, SPKI_SHA384, NONCE, TASK, (TASK,))


def test_evidence_with_a_task_encodes_to_the_pinned_bytes() -> None:
    vectors = _vectors()
    assert {k: hashlib.sha256(v).hexdigest() for k, v in vectors.items()} == EVIDENCE_SHA256
    for name, claims in (("task", CLAIMS_TASK), ("task+log", CLAIMS_TASK_LOG)):
        evidence = TaggedEvidence.decode(vectors[name])
        assert vectors[name].startswith(b"\xda\x74\x6d\x68\x66\x82\x59")  # tag 1953327206, [bstr(quote) ...
        assert evidence.claims == claims
        report = parse_quote(evidence.quote).report
        assert report.report_data == hashlib.sha384(claims).digest() + bytes(16)
    assert parse_quote(TaggedEvidence.decode(vectors["task"]).quote).report.rtmrs[3] == bytes(48)
    assert parse_quote(TaggedEvidence.decode(vectors["task+log"]).quote).report.rtmrs[3] == RTMR3_WITH_TASK
    assert hashlib.sha384(bytes(48) + TASK).digest() == RTMR3_WITH_TASK


def test_evidence_with_a_task_verifies_and_replays() -> None:
    vectors = _vectors()
    policy = Policy.from_dict({"tee": ["simulated"], "mrtd": "any", "task": [TASK.hex()]})
    verifier = PeerVerifier("kat", policy, [SimulatedVerifier()], DecisionLog())
    plain = verifier.verify_genuine(TaggedEvidence.decode(vectors["task"]), _spki())
    assert (plain.task, plain.rtmr3_log) == (TASK, None)
    logged = verifier.verify_genuine(TaggedEvidence.decode(vectors["task+log"]), _spki(), NONCE)
    assert (logged.task, logged.rtmr3_log, logged.report.rtmrs[3]) == (TASK, (TASK,), RTMR3_WITH_TASK)
    assert policy.evaluate(plain) == [] and policy.evaluate(logged) == []
