"""Resuming from a sealed checkpoint against the key broker's record: an older genuine checkpoint
put back under the latest one's name is refused, naming both rounds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kb_support import Running
from tdxfl.engine.records import TensorSet
from tdxfl.errors import ConfigError, SealedFileError
from tdxfl.store.model_store import SealedFileStore
from tdxfl.store.rollback import (
    CheckpointRecord,
    ResumeVerdict,
    RollbackError,
    check_resume,
    file_sha256,
    record_refusal,
)

RUN = "run-1"
A, B = bytes([0xA]) * 32, bytes([0xB]) * 32


def seal(store: SealedFileStore, round_: int) -> Path:
    tensors = TensorSet.from_arrays(["w"], [np.full((4,), round_, np.float32)])
    return Path(store.save("latest", tensors, {"round": round_}))


def test_an_older_genuine_checkpoint_under_the_latest_name_is_refused(broker: Running, tmp_path: Path) -> None:
    store = SealedFileStore(tmp_path / "ps" / "checkpoints", os.urandom(32), label="checkpoint")
    with broker.client() as ps:
        old_bytes = seal(store, 3).read_bytes()
        ps.record_checkpoint(RUN, 3, file_sha256(store.path_for("latest")))
        latest = seal(store, 5)
        ps.record_checkpoint(RUN, 5, file_sha256(latest))
        # The honest resume: the file found is the one recorded.
        record = ps.latest_checkpoint(RUN)
        assert check_resume(record, store.load("latest")[1]["round"], file_sha256(latest)) is ResumeVerdict.MATCHES
        # The host puts the round-3 checkpoint back: it is genuine (it unseals) ...
        latest.write_bytes(old_bytes)
        found_round = store.load("latest")[1]["round"]
        assert found_round == 3
        # ... and the resume is refused against the broker's record, naming both rounds.
        with pytest.raises(RollbackError) as err:
            check_resume(ps.latest_checkpoint(RUN), found_round, file_sha256(latest))
    assert "round 3, older than round 5 recorded at the key broker" in str(err.value)
    assert err.value.recorded_round == 5 and err.value.found_round == 3
    assert isinstance(err.value, SealedFileError) and "\n" not in str(err.value)


def test_check_resume_decisions() -> None:
    record = CheckpointRecord(RUN, 5, A)
    assert check_resume(None, 2, A) is ResumeVerdict.NO_RECORD
    assert check_resume(record, 5, A) is ResumeVerdict.MATCHES
    assert check_resume(record, 6, B) is ResumeVerdict.AHEAD  # sealed, but the report was lost
    with pytest.raises(RollbackError, match="round 4, older than round 5") as older:
        check_resume(record, 4, B)
    assert (older.value.recorded_round, older.value.found_round) == (5, 4)
    with pytest.raises(RollbackError, match="is round 5 with sha256 0b0b.*recorded round 5 with sha256 0a0a") as other:
        check_resume(record, 5, B)
    assert (other.value.recorded_round, other.value.found_round) == (5, 5)


def test_records_only_move_forward() -> None:
    latest = CheckpointRecord(RUN, 5, A)
    assert record_refusal(None, CheckpointRecord(RUN, 0, A)) is None
    assert record_refusal(latest, CheckpointRecord(RUN, 6, B)) is None
    assert record_refusal(latest, CheckpointRecord(RUN, 5, A)) is None  # the same report again
    assert "round 4 is older than round 5" in (record_refusal(latest, CheckpointRecord(RUN, 4, A)) or "")
    assert "round 5 is already recorded" in (record_refusal(latest, CheckpointRecord(RUN, 5, B)) or "")


@pytest.mark.parametrize(
    "run_id,round_,sha256,needle",
    [
        ("", 1, A, "invalid run id"),
        ("-leading-dash", 1, A, "invalid run id"),
        ("r" * 129, 1, A, "invalid run id"),
        (RUN, -1, A, "round must be"),
        (RUN, True, A, "round must be"),
        (RUN, 1 << 53, A, "round must be"),
        (RUN, 1, A[:31], "32 bytes"),
    ],
)
def test_invalid_records_are_config_errors(run_id: str, round_: int, sha256: bytes, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        CheckpointRecord(run_id, round_, sha256)
