"""Test helpers shared across folders (importable because tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tdxfl.attestation.simulated import code_measurement
from tdxfl.demo import free_port


def federation_doc(workdir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A federation document (1 PS, 2 workers, simulated TDs, tiny MLP on digits)."""
    mrtd = code_measurement().hex()
    doc: dict[str, Any] = {
        "federation": {"name": "test-fed"},
        "party": [
            {"name": "ps", "role": "ps", "address": f"127.0.0.1:{free_port()}", "enroll_address": f"127.0.0.1:{free_port()}",
             "data_address": f"127.0.0.1:{free_port()}"},
            {"name": "worker-1", "role": "worker"},
            {"name": "worker-2", "role": "worker"},
        ],
        "training": {"model": "mlp", "dataset": "digits", "rounds": 3, "steps_per_round": 10, "batch_size": 32,
                     "optimizer": "adam", "learning_rate": 0.01},
        "faults": {"step_timeout_s": 5.0, "join_timeout_s": 60.0, "connect_retries": 5, "connect_backoff_s": 0.2},
        "attestation": {"mode": "simulated"},
        "policy": {
            "workers": {"tee": ["simulated"], "mrtd": [mrtd]},
            "ps": {"tee": ["simulated"], "mrtd": [mrtd]},
        },
        "output": {"dir": str(workdir)},
    }
    for name, table in sections.items():
        doc[name] = {**doc.get(name, {}), **table}
    return doc
