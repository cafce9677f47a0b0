"""Attestation policy as data: what a party demands of a peer's verified evidence.

A policy is written in the federation's TOML (one table per direction) and judged against a
``VerifiedEvidence``. Every refusal names the failing field, the peer's value and the allowed
values. Defaults are strict: real TDX only, DEBUG forbidden, TCB ``UpToDate`` only, no cloud
platform flags, and MRTD must be listed (or explicitly ``"any"``). ``task`` pins the task code's
digest that a peer's evidence claims (:mod:`tdxfl.attestation.code_identity`); it is ``"any"``
unless listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from tdxfl.attestation.code_identity import TASK_DIGEST_SIZE
from tdxfl.attestation.interfaces import VerifiedEvidence
from tdxfl.errors import ConfigError

ANY = "any"
_MEASUREMENT_SIZES = {"mrtd": 48, "rtmr0": 48, "rtmr1": 48, "rtmr2": 48, "rtmr3": 48, "mrconfigid": 48, "mrowner": 48}
_DIGEST_SIZES = {**_MEASUREMENT_SIZES, "task": TASK_DIGEST_SIZE}


MeasurementRule = frozenset[bytes] | None  # None means "any"


def _short(value: bytes) -> str:
    h = value.hex()
    return h if len(h) <= 24 else f"{h[:12]}…{h[-8:]}"


def _parse_rule(key: str, raw: object) -> MeasurementRule:
    if raw == ANY:
        return None
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f'policy key {key!r} must be "any", a hex string or a list of hex strings')
    out = set()
    for v in values:
        try:
            b = bytes.fromhex(v)
        except ValueError as e:
            raise ConfigError(f"policy key {key!r}: {v!r} is not hex") from e
        if len(b) != _DIGEST_SIZES[key]:
            raise ConfigError(f"policy key {key!r}: {v!r} is {len(b)} bytes, expected {_DIGEST_SIZES[key]}")
        out.add(b)
    return frozenset(out)


@dataclass(frozen=True)
class Policy:
    """Requirements on a peer's TD. Build one with ``Policy.from_dict`` from a TOML table."""

    tee: frozenset[str] = frozenset({"tdx"})
    mrtd: MeasurementRule = frozenset()
    rtmr0: MeasurementRule = None
    rtmr1: MeasurementRule = None
    rtmr2: MeasurementRule = None
    rtmr3: MeasurementRule = None
    mrconfigid: MeasurementRule = None
    mrowner: MeasurementRule = None
    #: task code digests a peer may claim to run (None: any task, or none)
    task: MeasurementRule = None
    allow_debug: bool = False
    tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    accepted_advisories: frozenset[str] = frozenset()
    allow_dynamic_platform: bool = False
    allow_cached_keys: bool = False
    allow_smt: bool = False

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> Policy:
        """Build a policy from a TOML table; unknown keys are an error (typos must not weaken it).

        Raises ConfigError naming the offending key when the table is malformed.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(table) - known
        if unknown:
            raise ConfigError(f"unknown policy keys: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for key, raw in table.items():
            if key in _DIGEST_SIZES:
                kwargs[key] = _parse_rule(key, raw)
            elif key in ("tee", "tcb_statuses", "accepted_advisories"):
                items = [raw] if isinstance(raw, str) else raw
                if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                    raise ConfigError(f"policy key {key!r} must be a list of strings")
                kwargs[key] = frozenset(items)
            else:
                if not isinstance(raw, bool):
                    raise ConfigError(f"policy key {key!r} must be true or false")
                kwargs[key] = raw
        if "tee" in kwargs and not kwargs["tee"] <= {"tdx", "simulated"}:
            raise ConfigError(f"policy key 'tee' accepts only 'tdx' and 'simulated', got {sorted(kwargs['tee'])}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The TOML-ready form of this policy (inverse of ``from_dict``). ``task`` appears only
        when pinned, so a policy that pins none writes the same bytes as before the key existed
        (keystores re-seal their policies unchanged)."""
        out: dict[str, Any] = {"tee": sorted(self.tee)}
        for key in _MEASUREMENT_SIZES:
            rule: MeasurementRule = getattr(self, key)
            out[key] = ANY if rule is None else sorted(v.hex() for v in rule)
        if self.task is not None:
            out["task"] = sorted(v.hex() for v in self.task)
        out["allow_debug"] = self.allow_debug
        out["tcb_statuses"] = sorted(self.tcb_statuses)
        out["accepted_advisories"] = sorted(self.accepted_advisories)
        out["allow_dynamic_platform"] = self.allow_dynamic_platform
        out["allow_cached_keys"] = self.allow_cached_keys
        out["allow_smt"] = self.allow_smt
        return out

    @property
    def requires_real_tdx(self) -> bool:
        """True when simulated evidence is refused."""
        return "simulated" not in self.tee

    def tee_refusal(self, kind: str) -> str | None:
        """The reason evidence of ``kind`` is refused outright, or None if the kind is accepted."""
        if kind in self.tee:
            return None
        hint = " (simulated evidence proves nothing about the host)" if kind == "simulated" else ""
        return f"evidence kind is {kind!r}; policy accepts only {sorted(self.tee)}{hint}"

    def evaluate(self, ev: VerifiedEvidence) -> list[str]:
        """Return the reasons ``ev`` violates this policy; an empty list means accepted."""
        refusal = self.tee_refusal(ev.tee)
        if refusal:
            return [refusal]
        reasons: list[str] = []
        r = ev.report
        values = {
            "mrtd": r.mrtd,
            "rtmr0": r.rtmrs[0],
            "rtmr1": r.rtmrs[1],
            "rtmr2": r.rtmrs[2],
            "rtmr3": r.rtmrs[3],
            "mrconfigid": r.mrconfigid,
            "mrowner": r.mrowner,
        }
        for key, value in values.items():
            rule: MeasurementRule = getattr(self, key)
            if rule is not None and value not in rule:
                allowed = ", ".join(_short(v) for v in sorted(rule)) or "nothing (policy lists none)"
                reasons.append(f"{key.upper()} {_short(value)} is not allowed (policy allows: {allowed})")
        if self.task is not None:
            allowed = ", ".join(v.hex() for v in sorted(self.task)) or "nothing (policy lists none)"
            if ev.task is None:
                reasons.append(f"TASK: the evidence claims no task digest (policy allows: {allowed})")
            elif ev.task not in self.task:
                reasons.append(f"TASK {ev.task.hex()} is not allowed (policy allows: {allowed})")
        if r.debug and not self.allow_debug:
            reasons.append("TD attribute DEBUG is set (policy forbids debug TDs: the host can read their memory)")
        if ev.tcb_status not in self.tcb_statuses:
            reasons.append(f"TCB status {ev.tcb_status!r} is not accepted (policy accepts {sorted(self.tcb_statuses)})")
        bad_advisories = sorted(set(ev.advisory_ids) - self.accepted_advisories)
        if bad_advisories:
            reasons.append(
                f"advisories {bad_advisories} are not accepted (policy accepts {sorted(self.accepted_advisories)})"
            )
        p = ev.platform
        for flag, permitted, name in (
            (p.dynamic_platform, self.allow_dynamic_platform, "dynamic platform"),
            (p.cached_keys, self.allow_cached_keys, "cached keys"),
            (p.smt_enabled, self.allow_smt, "SMT"),
        ):
            if flag and not permitted:
                reasons.append(f"platform has {name} enabled (policy: allow_{name.lower().replace(' ', '_')} = false)")
        return reasons
