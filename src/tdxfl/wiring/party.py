"""What every party sets up before it talks: its attester, its verifiers, its decision log, and
its model key."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tdxfl.attestation.code_identity import TASK_DIGEST_SIZE, TaskFile
from tdxfl.attestation.code_identity import task_digest as digest_files
from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.insecure_simulated import SimulatedAttester, SimulatedTd, SimulatedVerifier, code_measurement
from tdxfl.attestation.interfaces import Attester, Verifier
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import PeerVerifier
from tdxfl.attestation.tdx.collateral import collateral_source
from tdxfl.attestation.tdx.configfs import TdxAttester
from tdxfl.attestation.tdx.dcap import TdxVerifier
from tdxfl.config import Attestation, Federation
from tdxfl.errors import ConfigError
from tdxfl.keybroker.client import fetch_key
from tdxfl.store.keys import derive_store_key
from tdxfl.transport.ports import check_ports_free
from tdxfl.wiring.tasks import measure_task

__all__ = [
    "PartyContext",
    "broker_key",
    "check_role",
    "check_start",
    "make_attester",
    "model_key",
    "party_context",
    "verifiers_for",
]

log = logging.getLogger(__name__)


def check_role(federation: Federation, name: str, role: str) -> None:
    """ConfigError unless ``name`` is a party of ``role`` in the federation file."""
    party = federation.party(name)
    if party.role != role:
        raise ConfigError(f"{name!r} is a {party.role} of this federation, not a {role}")


def check_start(federation: Federation, name: str, role: str) -> None:
    """What a party checks before it fetches a key or imports a framework, each fault a
    ConfigError: ``name`` is a ``role`` of the federation, its task code is found (the names of
    the task, model and optimizer were checked when the file was read), its data exists, and
    the ports it will listen on (a PS's three) are free."""
    check_role(federation, name, role)
    measure_task(federation)
    data = federation.party_data(name)
    if data and not Path(data).exists():
        raise ConfigError(f"the data of {name} is not there: {data} (set [[party]] data, or --data)")
    if role == "ps":
        ps = federation.ps
        check_ports_free([ps.address, ps.enroll_address, ps.data_address])


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
    return TdxAttester(cfg.tdx.configfs_path, rtmr3_path=cfg.tdx.rtmr3_path)


def verifiers_for(policy: Policy, cfg: Attestation) -> list[Verifier]:
    """One verifier per evidence kind that ``policy`` accepts, and no other: the simulated
    verifier exists only where a policy admits simulated evidence."""
    verifiers: list[Verifier] = []
    if "tdx" in policy.tee:
        t = cfg.tdx
        verifiers.append(TdxVerifier(collateral_source(t.collateral_file, t.pccs_url, t.cache_dir)))
    if "simulated" in policy.tee:
        verifiers.append(SimulatedVerifier())
    return verifiers


@dataclass
class PartyContext:
    """A party's attestation set-up and its working directory.

    ``task_digest`` (:func:`tdxfl.attestation.code_identity.task_digest`) is the task code this
    party runs: every identity it makes claims it, and constructing the context with it measures
    it into the TD's RTMR3 (``Attester.extend_rtmr3``), so set it here, not later.
    """

    name: str
    role: str
    workdir: Path
    attester: Attester
    attestation: Attestation
    decisions: DecisionLog
    task_digest: bytes | None = None
    #: the task's files as read for ``task_digest``: what the party runs (see ``resolve_task``)
    task_files: tuple[TaskFile, ...] = ()

    def __post_init__(self) -> None:
        if self.task_digest is not None:
            if len(self.task_digest) != TASK_DIGEST_SIZE:
                raise ConfigError(f"a task digest is {TASK_DIGEST_SIZE} bytes, got {len(self.task_digest)}")
            self.attester.extend_rtmr3(self.task_digest)
            log.info("party %s runs task code %s", self.name, self.task_digest.hex())

    def peer_verifier(self, policy: Policy) -> PeerVerifier:
        """A verifier appraising peers against ``policy``, with the backends it needs."""
        return PeerVerifier(self.name, policy, verifiers_for(policy, self.attestation), self.decisions)


def party_context(
    federation: Federation, name: str, workdir: Path | None = None, *, task_digest: bytes | None = None
) -> PartyContext:
    """Set up party ``name``: working directory, attester and decision log, and the code identity
    of the task it runs (``task_digest``: by default the federation's task, see ``PartyContext``)."""
    party = federation.party(name)
    files: tuple[TaskFile, ...] = ()
    if task_digest is None:
        files = tuple(measure_task(federation))
        task_digest = digest_files(files)
    wd = workdir or federation.base_dir / federation.output.dir / name  # relative to the federation file
    wd.mkdir(parents=True, exist_ok=True)
    return PartyContext(
        name=name,
        role=party.role,
        workdir=wd,
        attester=make_attester(federation.attestation),
        attestation=federation.attestation,
        decisions=DecisionLog(wd / "attestation.jsonl"),
        task_digest=task_digest,
        task_files=files,
    )


def broker_key(federation: Federation, ctx: PartyContext, key_name: str) -> bytes:
    """Key ``key_name`` from the federation's ``[keybroker]``, released to this attested TD over
    RA-TLS into memory (KeyRefused, AttestationRefused or Unavailable with the reason)."""
    broker = federation.keybroker
    if broker is None:
        raise ConfigError("the federation file has no [keybroker] table")
    return fetch_key(
        ctx.name,
        ctx.role,
        ctx.attester,
        ctx.peer_verifier(federation.policy_for("keybroker")),
        key_name,
        broker.address,
        broker.enroll_address,
        broker_party=broker.name,
        retries=federation.faults.connect_retries,
        backoff_s=federation.faults.connect_backoff_s,
        task_digest=ctx.task_digest,
    )


def model_key(federation: Federation, ctx: PartyContext) -> bytes:
    """The 32-byte model key for sealed storage, in memory only.

    With a ``[keybroker]`` table, it is released by the key broker to this attested TD over
    RA-TLS; otherwise (development) it is derived from the secret in ``output.secret_env``.
    """
    if federation.keybroker is not None:
        return broker_key(federation, ctx, federation.keybroker.key)
    secret = os.environ.get(federation.output.secret_env, "")
    if not secret:
        raise ConfigError(
            f"no model key: configure a [keybroker], or (development) set the environment variable "
            f"{federation.output.secret_env} to a secret the key is derived from"
        )
    return derive_store_key(secret, f"{federation.name}/model-store")
