"""Attested task code over the wire: real servers on port 0, policies that pin the task digest.

The PS demands that every worker runs the approved training code, each worker that the PS runs the
approved aggregation code, and the key broker's key policy that a party runs approved code before
it releases the model key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.eventlog import extend
from tdxfl.attestation.policy import Policy
from tdxfl.client.connection import PsEndpoint, connect_to_ps
from tdxfl.config import Federation
from tdxfl.config.broker import parse_broker_config
from tdxfl.engine.records import TensorSet
from tdxfl.engine.strategy import FedAvg, LocalTraining
from tdxfl.errors import AttestationRefused, ConfigError, KeyRefused
from tdxfl.keybroker.keystore import Keystore
from tdxfl.transport.attested import AttestedServer, connect, role_table
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
from tdxfl.wiring.keybroker import start_keybroker
from tdxfl.wiring.party import PartyContext, broker_key, party_context
from tdxfl.wiring.ps import attested_fleet

TRAINING = bytes.fromhex("a1" * 48)  # the approved training code
AGGREGATION = bytes.fromhex("b2" * 48)  # the approved aggregation code
ROGUE = bytes.fromhex("c3" * 48)  # other code
WORKERS = ["worker-1", "worker-2"]


class Join(pb_grpc.ParameterServerServicer):
    def __init__(self, server: AttestedServer) -> None:
        self.server = server

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        return pb.JoinReply(worker_index=WORKERS.index(self.server.peer_of(context).party))


def task_federation(make: Callable[..., Federation], **extra: dict[str, object]) -> Federation:
    """The test federation with the PS pinning TRAINING and the workers pinning AGGREGATION."""
    return make(
        policy={
            "workers": {"tee": ["simulated"], "mrtd": "any", "task": [TRAINING.hex()]},
            "ps": {"tee": ["simulated"], "mrtd": "any", "task": [AGGREGATION.hex()]},
        },
        **extra,
    )


@pytest.fixture
def served(make_federation: Callable[..., Federation]) -> Iterator[tuple[Federation, PartyContext]]:
    """A PS (AttestedServer) running AGGREGATION whose policy pins TRAINING for workers."""
    fed = task_federation(make_federation)
    ctx = party_context(fed, "ps", task_digest=AGGREGATION)
    server = AttestedServer(
        "ps",
        ctx.attester,
        ctx.peer_verifier(fed.policy_for("workers")),
        "127.0.0.1:0",
        "127.0.0.1:0",
        roles=role_table([(w, "worker") for w in WORKERS]),
        task_digest=ctx.task_digest,
    )
    pb_grpc.add_ParameterServerServicer_to_server(Join(server), server.main)
    server.start()
    try:
        yield fed.with_ps_addresses(f"127.0.0.1:{server.port}", f"127.0.0.1:{server.enroll_port}", "x:0"), ctx
    finally:
        server.stop(None)


def dial(fed: Federation, name: str, task: bytes | None) -> grpc.Channel:
    """Attest the PS as worker ``name`` claiming ``task`` (None: software that claims no task)."""
    ctx = replace(party_context(fed, name), task_digest=task)
    return connect(
        name,
        "worker",
        ctx.attester,
        ctx.peer_verifier(fed.policy_for("ps")),
        "ps",
        fed.ps.address,
        fed.ps.enroll_address,
        task_digest=ctx.task_digest,
    ).channel


def test_worker_running_other_code_is_refused_naming_both_digests(served: tuple[Federation, PartyContext]) -> None:
    fed, ps = served
    with pytest.raises(AttestationRefused) as err:
        dial(fed, "worker-1", ROGUE)
    assert f"ps refused us: TASK {ROGUE.hex()} is not allowed (policy allows: {TRAINING.hex()})" in str(err.value)
    (decision,) = ps.decisions.decisions
    assert (decision.peer, decision.result, decision.task) == ("worker-1", "refused", ROGUE.hex())


def test_worker_claiming_no_task_is_refused(served: tuple[Federation, PartyContext]) -> None:
    fed, _ = served
    with pytest.raises(AttestationRefused, match=f"claims no task digest \\(policy allows: {TRAINING.hex()}\\)"):
        dial(fed, "worker-1", None)


def test_worker_running_the_approved_code_is_accepted(served: tuple[Federation, PartyContext]) -> None:
    fed, ps = served
    channel = dial(fed, "worker-2", TRAINING)
    assert pb_grpc.ParameterServerStub(channel).Join(pb.JoinRequest(), timeout=10).worker_index == 1
    (decision,) = ps.decisions.decisions
    assert (decision.peer, decision.result, decision.task) == ("worker-2", "accepted", TRAINING.hex())
    # the worker's decision log names the PS's aggregation code, replayed through its RTMR3 log
    (judged_ps,) = DecisionLog.read(Path(fed.output.dir) / "worker-2" / "attestation.jsonl")
    assert (judged_ps.peer, judged_ps.result, judged_ps.task) == ("ps", "accepted", AGGREGATION.hex())


def test_workers_refuse_a_ps_running_other_aggregation(served: tuple[Federation, PartyContext]) -> None:
    fed, _ = served
    strict = replace(fed, policies={**fed.policies, "ps": _pin(ROGUE)})
    with pytest.raises(AttestationRefused) as err:
        dial(strict, "worker-1", TRAINING)
    assert f"we refused ps: TASK {AGGREGATION.hex()} is not allowed (policy allows: {ROGUE.hex()})" in str(err.value)


def _pin(*tasks: bytes) -> Policy:
    return Policy.from_dict({"tee": ["simulated"], "mrtd": "any", "task": [t.hex() for t in tasks]})


def test_party_context_measures_the_task_into_rtmr3(make_federation: Callable[..., Federation]) -> None:
    ctx = party_context(make_federation(), "worker-1", task_digest=TRAINING)
    assert ctx.attester.rtmr3_log == (TRAINING,)
    assert ctx.attester.td.rtmrs[3] == extend(bytes(48), TRAINING)  # type: ignore[attr-defined]


def test_attested_fleet_and_connect_to_ps_carry_the_tasks(make_federation: Callable[..., Federation]) -> None:
    fed = task_federation(make_federation)
    ps = party_context(fed, "ps", task_digest=AGGREGATION)
    specs = TensorSet.from_arrays(["w"], [np.zeros(3, np.float32)]).specs
    fleet = attested_fleet(fed, ps, specs, FedAvg(LocalTraining(1, 0.1)))
    fleet.start()
    try:
        a = fleet.addresses
        endpoint = PsEndpoint("ps", a.address, a.enroll_address, a.data_address)

        def join(name: str, task: bytes) -> None:
            ctx = party_context(fed, name, task_digest=task)
            conn = connect_to_ps(
                name,
                ctx.attester,
                ctx.peer_verifier(fed.policy_for("ps")),
                endpoint,
                digest=fed.training_digest(),
                wire_dtype=None,
                retries=0,
                backoff_s=0.0,
                task_digest=ctx.task_digest,
            )
            conn.close()

        join("worker-1", TRAINING)
        with pytest.raises(AttestationRefused, match=f"TASK {ROGUE.hex()} is not allowed"):
            join("worker-2", ROGUE)
    finally:
        fleet.stop(linger=0)
    assert [(d.peer, d.result, d.task) for d in ps.decisions.decisions] == [
        ("worker-1", "accepted", TRAINING.hex()),
        ("worker-2", "refused", ROGUE.hex()),
    ]


def test_key_broker_releases_the_model_key_only_to_approved_code(
    make_federation: Callable[..., Federation], tmp_path: Path
) -> None:
    ks = Keystore.create(tmp_path / "broker" / "keystore", passphrase="pass phrase", scrypt_n=1 << 14)
    ks.new_key("model", _pin(TRAINING), ["worker"])
    config = parse_broker_config(
        {
            "broker": {
                "name": "keybroker",
                "address": "127.0.0.1:0",
                "enroll_address": "127.0.0.1:0",
                "keystore": "broker/keystore",
                "audit_log": "broker/audit.jsonl",
            },
            "attestation": {"mode": "simulated"},
            "enroll": {"worker-1": "worker", "worker-2": "worker"},
            "policy": {"tee": ["simulated"], "mrtd": "any"},
        },
        tmp_path,
    )
    broker = start_keybroker(config, ks, task_digest=AGGREGATION)
    try:
        ports = broker.server.port, broker.server.enroll_port
        pin_aggregation = {"tee": ["simulated"], "mrtd": "any", "task": [AGGREGATION.hex()]}
        fed = make_federation(
            keybroker={"address": f"127.0.0.1:{ports[0]}", "enroll_address": f"127.0.0.1:{ports[1]}"},
            policy={"keybroker": pin_aggregation},
        )
        approved = party_context(fed, "worker-1", task_digest=TRAINING)
        assert len(broker_key(fed, approved, "model")) == 32
        with pytest.raises(KeyRefused, match=f"TASK {ROGUE.hex()} is not allowed"):
            broker_key(fed, party_context(fed, "worker-2", task_digest=ROGUE), "model")
    finally:
        broker.stop(grace=None)


def test_a_task_digest_must_be_48_bytes(make_federation: Callable[..., Federation]) -> None:
    with pytest.raises(ConfigError, match="a task digest is 48 bytes, got 32"):
        party_context(make_federation(), "worker-1", task_digest=bytes(32))
