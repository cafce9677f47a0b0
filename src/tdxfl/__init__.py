"""tdxfl: federated learning between Intel TDX trust domains over mutually attested RA-TLS.

The public API, by layer:

* errors -- ``TdxflError`` and its subclasses (:mod:`tdxfl.errors`);
* the round engine, framework- and network-neutral (:mod:`tdxfl.engine`) -- ``TensorSet``,
  ``TensorSpec``, ``ModelAdapter``, ``Strategy``, ``SyncGradients``, ``FedAvg``,
  ``LocalTraining``, ``Mode``, ``UpdateKind``, ``RoundPlan``, ``run_rounds``,
  ``run_worker_loop``, ``LocalData``, ``InMemoryFleet``, ``simulate``, ``SimulatedWorker``,
  ``ManualClock``;
* configuration -- ``Federation``, ``load_federation``;
* running parties (:mod:`tdxfl.wiring`) -- ``party_context``, ``ParameterServer``,
  ``run_parameter_server``, ``run_worker``.

Names are imported on first use, so ``import tdxfl`` stays cheap (no gRPC or ML framework
until a name that needs them is touched).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # errors
    "AttestationError": "tdxfl.errors",
    "AttestationRefused": "tdxfl.errors",
    "ConfigError": "tdxfl.errors",
    "FederationError": "tdxfl.errors",
    "KeyRefused": "tdxfl.errors",
    "LinkError": "tdxfl.errors",
    "RecordError": "tdxfl.errors",
    "SealedFileError": "tdxfl.errors",
    "TaskError": "tdxfl.errors",
    "TdxflError": "tdxfl.errors",
    "Unavailable": "tdxfl.errors",
    "WrongKey": "tdxfl.errors",
    # the round engine
    "FedAvg": "tdxfl.engine.strategy",
    "InMemoryFleet": "tdxfl.engine.memory",
    "LocalData": "tdxfl.engine.data",
    "LocalTraining": "tdxfl.engine.strategy",
    "ManualClock": "tdxfl.engine.clock",
    "Mode": "tdxfl.engine.kinds",
    "ModelAdapter": "tdxfl.engine.model",
    "RoundPlan": "tdxfl.engine.server",
    "Strategy": "tdxfl.engine.strategy",
    "SyncGradients": "tdxfl.engine.strategy",
    "TensorSet": "tdxfl.engine.records",
    "TensorSpec": "tdxfl.engine.records",
    "UpdateKind": "tdxfl.engine.kinds",
    "run_rounds": "tdxfl.engine.server",
    "run_worker_loop": "tdxfl.engine.worker",
    "SimulatedWorker": "tdxfl.engine.memory",
    "simulate": "tdxfl.engine.memory",
    # configuration
    "Federation": "tdxfl.config",
    "load_federation": "tdxfl.config",
    # running parties
    "ParameterServer": "tdxfl.wiring.ps",
    "party_context": "tdxfl.wiring.party",
    "run_parameter_server": "tdxfl.wiring.ps",
    "run_worker": "tdxfl.wiring.worker",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tdxfl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
