"""RTMR3 extension through a simulated sysfs tree, and the replay of its log in TDX evidence.

``FakeRtmr3File`` plays the kernel's ``rtmr3:sha384``: reads give the register, each 48-byte write
is recorded and extends it. The fake configfs attester's quotes then report that register, so the
evidence a real TD would make is replayed by the verifier end to end (its signature is not checked:
the verifier below only parses, DCAP is tested elsewhere).
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest

from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.eventlog import extend
from tdxfl.attestation.evidence import TDX_EVIDENCE_TAG, TaggedEvidence
from tdxfl.attestation.interfaces import VerifiedEvidence, Verifier
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import PeerVerifier, TlsIdentity, certificate_evidence, make_evidence
from tdxfl.attestation.report import parse_quote
from tdxfl.attestation.tdx.configfs import TdxAttester
from tdxfl.attestation.tdx.rtmr import DEFAULT_RTMR3_PATH, SysfsRtmr3
from tdxfl.config.federation import TdxConfig, parse_attestation
from tdxfl.errors import AttestationError
from tdxfl.wiring.party import make_attester

ZERO = bytes(48)
TASK = bytes.fromhex("ab" * 48)
OTHER = bytes.fromhex("cd" * 48)
RTMR3_OFFSET = 48 + 472  # header + offset of RTMR3 in the TD report body


class FakeRtmr3File(SysfsRtmr3):
    """SysfsRtmr3 over a plain file that behaves as the kernel's: a write of 48 bytes extends."""

    def __init__(self, path: Path, value: bytes = ZERO) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value)
        super().__init__(path)
        self.writes: list[bytes] = []

    def _write(self, digest: bytes) -> None:
        if len(digest) != 48:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.writes.append(digest)
        self.path.write_bytes(extend(self.path.read_bytes(), digest))


class RegisterInQuote:
    """Mixed into the fake configfs attester: outblob reports the fake register as RTMR3."""

    rtmr3: SysfsRtmr3

    def _write(self, path: Path, data: bytes) -> None:
        super()._write(path, data)  # type: ignore[misc]
        if path.name == "inblob":
            quote = bytearray((path.parent / "outblob").read_bytes())
            quote[RTMR3_OFFSET : RTMR3_OFFSET + 48] = self.rtmr3.read()
            (path.parent / "outblob").write_bytes(bytes(quote))


class ParseOnlyTdxVerifier(Verifier):
    """Reads a TDX quote's report without checking its signature (the replay is under test)."""

    tee = "tdx"
    evidence_tag = TDX_EVIDENCE_TAG

    def verify(self, quote: bytes) -> VerifiedEvidence:
        return VerifiedEvidence(tee="tdx", report=parse_quote(quote).report, tcb_status="UpToDate")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """Where the simulated sysfs tree keeps RTMR3."""
    return tmp_path / "sys" / "class" / "misc" / "tdx_guest" / "measurements" / "rtmr3:sha384"


@pytest.fixture
def tdx_td(fake_configfs: Any, sysfs: Path) -> Any:
    """A factory ``make(rtmr3=ZERO) -> TdxAttester`` over fake configfs and fake sysfs RTMR3."""

    def make(rtmr3: bytes = ZERO) -> TdxAttester:
        attester = fake_configfs()
        attester.__class__ = type("FakeTd", (RegisterInQuote, attester.__class__), {})
        attester.rtmr3 = FakeRtmr3File(sysfs, rtmr3)
        return attester  # type: ignore[no-any-return]

    return make


def tdx_verifier(**table: object) -> PeerVerifier:
    policy = Policy.from_dict({"mrtd": "any", **table})
    return PeerVerifier("ps", policy, [ParseOnlyTdxVerifier()], DecisionLog())


# -- the sysfs file --------------------------------------------------------------------------
def test_default_path_and_config_key(tmp_path: Path) -> None:
    assert TdxAttester().rtmr3.path == DEFAULT_RTMR3_PATH
    assert str(DEFAULT_RTMR3_PATH) == "/sys/class/misc/tdx_guest/measurements/rtmr3:sha384"
    assert TdxConfig().rtmr3_path == str(DEFAULT_RTMR3_PATH)
    cfg = parse_attestation({"mode": "tdx", "tdx": {"rtmr3_path": str(tmp_path / "rtmr3")}})
    attester = make_attester(cfg)
    assert isinstance(attester, TdxAttester) and attester.rtmr3.path == tmp_path / "rtmr3"


def test_extension_writes_the_digest_once_and_logs_it(sysfs: Path) -> None:
    rtmr3 = FakeRtmr3File(sysfs)
    rtmr3.extend(TASK)
    assert rtmr3.writes == [TASK] and sysfs.read_bytes() == extend(ZERO, TASK)
    assert rtmr3.log == (TASK,)


def test_earlier_start_of_the_same_task_is_not_extended_again(sysfs: Path) -> None:
    rtmr3 = FakeRtmr3File(sysfs, extend(ZERO, TASK))
    rtmr3.extend(TASK)
    assert rtmr3.writes == [] and rtmr3.log == (TASK,)


def test_register_with_foreign_events_is_left_alone(sysfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    rtmr3 = FakeRtmr3File(sysfs, extend(ZERO, OTHER))
    with caplog.at_level(logging.WARNING):
        rtmr3.extend(TASK)
    assert rtmr3.writes == [] and rtmr3.log is None
    assert "extended since boot by other software" in caplog.text


def test_missing_file_warns_once_and_keeps_no_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    attester = TdxAttester(tmp_path / "tsm", rtmr3_path=tmp_path / "absent" / "rtmr3:sha384")
    assert not attester.can_extend_rtmr3
    with caplog.at_level(logging.WARNING):
        attester.extend_rtmr3(TASK)
        attester.extend_rtmr3(TASK)
    warnings = [r for r in caplog.records if "RTMR3 is not extensible here" in r.getMessage()]
    assert len(warnings) == 1 and "Linux >= 6.16" in warnings[0].getMessage()
    assert attester.rtmr3_log is None


def test_write_that_does_not_extend_as_it_must_is_an_error(sysfs: Path) -> None:
    class Ignoring(FakeRtmr3File):
        def _write(self, digest: bytes) -> None:
            self.writes.append(digest)  # the register does not move

    with pytest.raises(AttestationError, match=r"gave 0{96}, expected [0-9a-f]{96} \(the write did not extend it"):
        Ignoring(sysfs).extend(TASK)


def test_unreadable_or_malformed_register_is_an_error(sysfs: Path) -> None:
    with pytest.raises(AttestationError, match="holds 12 bytes, not a 48-byte RTMR"):
        FakeRtmr3File(sysfs, b"not 48 bytes").extend(TASK)

    class Refusing(FakeRtmr3File):
        def _write(self, digest: bytes) -> None:
            raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(AttestationError, match="cannot extend RTMR3 through .*Permission denied"):
        Refusing(sysfs).extend(TASK)


# -- end to end: extension, quote, replay ----------------------------------------------------
def test_tdx_evidence_reports_the_extended_rtmr3_and_its_log_replays(tdx_td: Any) -> None:
    attester = tdx_td()
    assert attester.can_extend_rtmr3
    attester.extend_rtmr3(TASK)
    identity = TlsIdentity.create(attester, "worker-1", task_digest=TASK)
    evidence = certificate_evidence(identity.certificate)
    assert parse_quote(evidence.quote).report.rtmrs[3] == extend(ZERO, TASK)
    assert evidence.parsed_claims().rtmr3_log == (TASK,)
    pinned = extend(ZERO, TASK).hex()
    appraisal = tdx_verifier(task=[TASK.hex()], rtmr3=[pinned]).appraise("worker-1", certificate=identity.cert_pem)
    assert appraisal.decision.accepted, appraisal.decision.reason
    assert appraisal.evidence is not None and appraisal.evidence.rtmr3_log == (TASK,)


def test_tampered_tdx_log_is_refused(tdx_td: Any) -> None:
    attester = tdx_td()
    attester.extend_rtmr3(TASK)
    attester.rtmr3.log = (OTHER,)  # claims another event than the one extended
    evidence = make_evidence(attester, b"spki", None, OTHER)
    with pytest.raises(AttestationError) as err:
        tdx_verifier().verify_genuine(evidence, b"spki")
    assert "does not replay to the quoted RTMR3" in str(err.value)
    assert extend(ZERO, OTHER).hex() in str(err.value) and extend(ZERO, TASK).hex() in str(err.value)


def test_tdx_log_that_does_not_reach_the_quoted_rtmr3_is_refused(tdx_td: Any, sysfs: Path) -> None:
    attester = tdx_td()
    attester.extend_rtmr3(TASK)
    sysfs.write_bytes(extend(sysfs.read_bytes(), OTHER))  # another process extends RTMR3 later, unlogged
    identity = TlsIdentity.create(attester, "worker-1", task_digest=TASK)
    d = tdx_verifier().appraise("worker-1", certificate=identity.cert_pem).decision
    assert not d.accepted and "did not log it" in d.reason


def test_fresh_tdx_evidence_carries_the_log_too(tdx_td: Any) -> None:
    attester = tdx_td()
    attester.extend_rtmr3(TASK)
    identity = TlsIdentity.create(attester, "ps", task_digest=TASK)
    fresh = identity.fresh_evidence(attester, b"n" * 32)
    verified = tdx_verifier(task=[TASK.hex()]).verify_certificate(identity.certificate, evidence=fresh, nonce=b"n" * 32)
    assert (verified.task, verified.rtmr3_log) == (TASK, (TASK,))
    assert TaggedEvidence.decode(fresh).parsed_claims().task == TASK


def test_old_kernel_tdx_evidence_pins_the_task_by_claim(fake_configfs: Any, tmp_path: Path) -> None:
    attester = fake_configfs()
    attester.rtmr3 = SysfsRtmr3(tmp_path / "no-such-file")
    attester.extend_rtmr3(TASK)
    identity = TlsIdentity.create(attester, "worker-1", task_digest=TASK)
    assert certificate_evidence(identity.certificate).parsed_claims().rtmr3_log is None
    refused = tdx_verifier(task=[OTHER.hex()]).appraise("worker-1", certificate=identity.cert_pem).decision
    assert not refused.accepted and f"TASK {TASK.hex()} is not allowed (policy allows: {OTHER.hex()})" in refused.reason
    assert tdx_verifier(task=[TASK.hex()]).appraise("worker-1", certificate=identity.cert_pem).decision.accepted
