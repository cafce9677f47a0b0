"""Intel TDX quote verification with Intel DCAP collateral (via the ``dcap-qvl`` library).

``TdxVerifier`` decides only whether a quote is genuine: its signature, the QE report, the PCK
certificate chain up to Intel's root CA, the CRLs, and the collateral's signatures and validity
at the verification time. Failing any of those is a refusal. The TCB status, advisories and the
platform flags (dynamic platform, cached keys, SMT) are *reported*, not judged: dcap-qvl is run
with a policy that admits all of them, and ``tdxfl.attestation.policy.Policy`` judges them, so
one verifier serves every policy and every refusal reason comes from one place.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import dcap_qvl

from tdxfl.attestation.evidence import TDX_EVIDENCE_TAG
from tdxfl.attestation.interfaces import PlatformFlags, VerifiedEvidence, Verifier
from tdxfl.attestation.report import TDX_TEE_TYPE, TdReport, parse_quote
from tdxfl.attestation.tdx.collateral import CollateralSource, collateral_expiry
from tdxfl.errors import AttestationError

#: every TCB status dcap-qvl 0.7 knows; all are admitted here and judged by Policy
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
    "Revoked",
)
#: PCK certificate SGX types: 0 Standard, 1 Scalable, 2 Scalable with integrity
_SGX_TYPES = [0, 1, 2]


def _utc(now: int) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def reporting_policy(now: int) -> dcap_qvl.QuotePolicy:
    """A dcap-qvl policy that refuses only non-genuine evidence and admits every TCB outcome."""
    policy = (
        dcap_qvl.QuotePolicy.strict(now)
        .allow_dynamic_platform(True)
        .allow_cached_keys(True)
        .allow_smt(True)
        .accepted_sgx_types(_SGX_TYPES)
    )
    for status in TCB_STATUSES:
        policy = policy.allow_status(status)
    return policy


def _expired_at(collateral: dcap_qvl.QuoteCollateralV3, now: int) -> bool:
    """Whether some part of ``collateral`` (TCB info, QE identity, a CRL) has expired by ``now``,
    by the collateral's own nextUpdate dates; False when those cannot be read."""
    try:
        return collateral_expiry(collateral) <= now
    except AttestationError:
        return False


def _flag(pck: dict[str, Any], name: str) -> bool:
    """A PCK certificate flag: "True"/"False"; "Undefined" (absent) counts as set (fail closed)."""
    value = pck.get(name)
    return value not in ("False", False)


def platform_flags(claims: dict[str, Any]) -> PlatformFlags:
    """The platform flags of the PCK certificate, from dcap-qvl's claims JSON."""
    pck = claims.get("platform", {}).get("pck", {})
    return PlatformFlags(
        dynamic_platform=_flag(pck, "dynamic_platform"),
        cached_keys=_flag(pck, "cached_keys"),
        smt_enabled=_flag(pck, "smt_enabled"),
    )


def _check_same_report(report: TdReport, claims: dict[str, Any]) -> None:
    """Our parse of the body must agree with what dcap-qvl verified (a parser-bug tripwire)."""
    body = claims.get("report", {})
    td = body.get("TD10") or body.get("TD15") or body.get("TD15Ex") or {}
    if "base" in td and "mr_td" not in td:  # TD15 nests the TD10 fields under "base"
        td = td["base"]
    if td.get("mr_td") != report.mrtd.hex() or td.get("report_data") != report.report_data.hex():
        raise AttestationError("quote parser disagrees with the verified quote body; refusing it")


class TdxVerifier(Verifier):
    """Verifies Intel TDX quotes (v4/v5) against DCAP collateral at the real clock or ``as_of``."""

    tee = "tdx"
    evidence_tag = TDX_EVIDENCE_TAG

    def __init__(
        self,
        collateral: CollateralSource,
        *,
        as_of: int | dt.datetime | None = None,
        root_ca_der: bytes | None = None,
    ) -> None:
        """``as_of`` pins the verification time (historic evidence, tests); None means now.

        ``root_ca_der`` replaces Intel's SGX root CA (only for test infrastructure).
        """
        self.collateral = collateral
        self.as_of = int(as_of.timestamp()) if isinstance(as_of, dt.datetime) else as_of
        self._qvl = dcap_qvl.QuoteVerifier(root_ca_der) if root_ca_der else dcap_qvl.QuoteVerifier()

    def now(self) -> int:
        """The verification time (unix seconds)."""
        return self.as_of if self.as_of is not None else int(time.time())

    def verify(self, quote: bytes) -> VerifiedEvidence:
        """Verify ``quote``; raise AttestationError naming the failed check when it is not genuine."""
        try:
            parsed = parse_quote(quote)
        except AttestationError as e:
            raise AttestationError(f"not a valid TDX quote: {e}") from e
        now = self.now()
        try:
            collateral = self.collateral.collateral_for(quote, now)
        except AttestationError:
            raise
        except Exception as e:  # a custom source's own failure is still a refusal, with its reason
            raise AttestationError(f"no DCAP collateral for the quote: {e}") from e
        try:
            result = self._qvl.verify_with_policy(quote, collateral, now, reporting_policy(now))
            claims: dict[str, Any] = json.loads(result.to_json())
        except Exception as e:  # dcap-qvl reports every failed check as ValueError
            hint = ""
            if _expired_at(collateral, now):
                hint = " (collateral expired: fetch fresh collateral, or verify as of a time it was valid)"
            raise AttestationError(f"TDX quote refused by DCAP verification at {_utc(now)}: {e}{hint}") from e
        if claims.get("tee_type") != TDX_TEE_TYPE:
            raise AttestationError(f"verified quote has TEE type {claims.get('tee_type')!r}, not TDX")
        _check_same_report(parsed.report, claims)
        tcb = claims.get("tcb", {})
        if not tcb.get("status"):
            raise AttestationError("DCAP verification returned no TCB status; refusing the quote")
        return VerifiedEvidence(
            tee=self.tee,
            report=parsed.report,
            tcb_status=str(tcb["status"]),
            advisory_ids=tuple(str(a) for a in tcb.get("advisory_ids", ())),
            platform=platform_flags(claims),
        )
