"""What every party sets up before it talks: its attester, its verifiers, its decision log."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.interfaces import Attester, Verifier
from tdxfl.attestation.ratls import PeerVerifier
from tdxfl.attestation.simulated import SimulatedAttester, SimulatedTd, SimulatedVerifier, code_measurement
from tdxfl.config import Attestation, ConfigError, Federation

log = logging.getLogger(__name__)


def _measurement(value: str, what: str, default: bytes) -> bytes:
    if not value:
        return default
    try:
        raw = bytes.fromhex(value)
    except ValueError as e:
        raise ConfigError(f"attestation.simulated.{what} is not hex") from e
    if len(raw) != 48:
        raise ConfigError(f"attestation.simulated.{what} must be 48 bytes (96 hex digits)")
    return raw


def make_attester(cfg: Attestation) -> Attester:
    """This party's evidence source, per ``[attestation] mode``."""
    if cfg.mode == "simulated":
        s = cfg.simulated
        td = SimulatedTd(
            mrtd=code_measurement() if s.mrtd == "auto" else _measurement(s.mrtd, "mrtd", b""),
            rtmrs=tuple(_measurement(getattr(s, f"rtmr{i}"), f"rtmr{i}", bytes(48)) for i in range(4)),  # type: ignore[arg-type]
            debug=s.debug,
        )
        return SimulatedAttester(td)
    from tdxfl.attestation.tdx.configfs import TdxAttester

    return TdxAttester(cfg.tdx.configfs_path)


def make_verifiers(cfg: Attestation) -> list[Verifier]:
    """One verifier per evidence kind; the policy decides which kinds are acceptable."""
    from tdxfl.attestation.tdx.collateral import collateral_source
    from tdxfl.attestation.tdx.dcap import TdxVerifier

    t = cfg.tdx
    return [SimulatedVerifier(), TdxVerifier(collateral_source(t.collateral_file, t.pccs_url, t.cache_dir))]


@dataclass
class PartyContext:
    """A party's attestation set-up and its working directory."""

    name: str
    role: str
    workdir: Path
    attester: Attester
    verifiers: list[Verifier]
    decisions: DecisionLog

    def peer_verifier(self, federation: Federation, peer_role: str) -> PeerVerifier:
        """A verifier applying the federation's policy for peers of ``peer_role``."""
        return PeerVerifier(self.name, federation.policy_for(peer_role), self.verifiers, self.decisions)


def party_context(federation: Federation, name: str, workdir: Path | None = None) -> PartyContext:
    """Set up party ``name``: working directory, attester, verifiers and decision log."""
    party = federation.party(name)
    wd = workdir or Path(federation.output.dir) / name
    wd.mkdir(parents=True, exist_ok=True)
    attester = make_attester(federation.attestation)
    return PartyContext(
        name=name,
        role=party.role,
        workdir=wd,
        attester=attester,
        verifiers=make_verifiers(federation.attestation),
        decisions=DecisionLog(wd / "attestation.jsonl"),
    )


def model_key(federation: Federation, ctx: PartyContext) -> bytes:
    """The 32-byte model key for sealed storage, in memory only.

    With a ``[keybroker]`` table, it is released by the key broker to this attested TD over
    RA-TLS; otherwise (development) it is derived from the secret in ``output.secret_env``.
    """
    broker = federation.keybroker
    if broker is not None:
        from tdxfl.keybroker.client import fetch_key_for

        return fetch_key_for(
            ctx,
            federation.policy_for("keybroker"),
            broker.key,
            broker.address,
            broker.enroll_address,
            broker_party=broker.name,
            retries=federation.faults.connect_retries,
            backoff_s=federation.faults.connect_backoff_s,
        )
    from tdxfl.store.keys import derive_store_key

    secret = os.environ.get(federation.output.secret_env, "")
    if not secret:
        raise ConfigError(
            f"no model key: configure a [keybroker], or (development) set the environment variable "
            f"{federation.output.secret_env} to a secret the key is derived from"
        )
    return derive_store_key(secret, f"{federation.name}/model-store")
