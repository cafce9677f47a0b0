"""Multi-process runs: the demo as a user runs it, a worker killed mid-run, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from fedtools import eventually
from tdxfl.engine.kinds import Mode
from tdxfl.keybroker.keystore import Keystore
from tdxfl.wiring.demo import PASSPHRASE_ENV, demo_federation

ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "TF_CPP_MIN_LOG_LEVEL": "3", "TDXFL_MODEL_SECRET": "test-only secret"}


def tdxfl(*args: str, log: Path | None = None, **kw: object) -> subprocess.Popen[bytes]:
    out = log.open("wb") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "tdxfl", *args], stdout=out, stderr=subprocess.STDOUT, env=ENV, **kw)  # type: ignore[call-overload]


def test_demo_end_to_end(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    passphrase = "test-only keystore passphrase"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tdxfl",
            "demo",
            "--workdir",
            str(tmp_path / "run"),
            "--summary-json",
            str(summary_file),
        ],
        env={**ENV, PASSPHRASE_ENV: passphrase},
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    summary = json.loads(summary_file.read_text())
    assert summary["mode"] == "sync-gradients"
    assert summary["accuracy"] >= 0.90
    assert summary["rounds"] >= 1
    assert all(code == 0 for code in summary["exit_codes"].values())
    pairs = {(a["verifier"], a["peer"]) for a in summary["attestation"] if a["result"] == "accepted"}
    assert {("ps", "worker-1"), ("ps", "worker-2"), ("worker-1", "ps"), ("worker-2", "ps")} <= pairs
    assert Path(summary["checkpoint"]).read_bytes().startswith(b"TDXFLSEAL")
    # the model owner's trusted node unsealed the final model: same accuracy as the PS measured
    assert summary["unsealed_accuracy"] == summary["accuracy"]
    released = {(r["party"], r["key"]) for r in summary["key_releases"] if r["decision"] == "released"}
    assert released == {("ps", "model"), ("worker-1", "model"), ("worker-2", "model")}
    assert ("keybroker", "ps") in {(a["verifier"], a["peer"]) for a in summary["attestation"]}
    out = proc.stderr.decode()
    assert "SIMULATED" in out and "Attestation decisions" in out
    # the model key never reached the disk outside the broker's sealed keystore, nor the output
    key = Keystore.open(tmp_path / "run" / "keybroker" / "keystore", passphrase=passphrase).get("model").key
    needles = [key, key.hex().encode(), key.hex().upper().encode()]
    for f in [*tmp_path.rglob("*"), *Path(tempfile.gettempdir()).glob("*")]:
        if f.is_file() and f.stat().st_size < 200 << 20:
            data = f.read_bytes()
            assert not any(n in data for n in needles), f"model key found in {f}"
    assert not any(n.decode(errors="ignore") in out for n in needles[1:])


def _federation(tmp_path: Path) -> Path:
    fed = tmp_path / "federation.toml"
    fed.write_text(demo_federation(tmp_path, Mode.SYNC_GRADIENTS))
    return fed


def test_killed_worker_does_not_stop_training(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    sets = [
        "--set",
        "faults.quorum=1",
        "--set",
        "faults.step_timeout_s=4.0",
        "--set",
        "training.rounds=4",
        "--set",
        'policy.workers.rtmr3="any"',
        "--set",
        'policy.ps.rtmr3="any"',
    ]
    ps = tdxfl("ps", "-f", str(fed), *sets, "--no-live", log=tmp_path / "ps.log")
    w1 = tdxfl("worker", "-f", str(fed), *sets, "--name", "worker-1", log=tmp_path / "w1.log")
    w2 = tdxfl("worker", "-f", str(fed), *sets, "--name", "worker-2", log=tmp_path / "w2.log")
    metrics = tmp_path / "ps" / "metrics.jsonl"
    try:
        assert eventually(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, 120), (
            tmp_path / "ps.log"
        ).read_text()
        w2.send_signal(signal.SIGKILL)
        assert ps.wait(180) == 0, (tmp_path / "ps.log").read_text()
        assert w1.wait(60) == 0
    finally:
        for p in (ps, w1, w2):
            p.kill()
    rounds = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert len(rounds) == 4
    assert rounds[-1]["contributors"] < 2 * 25  # worker-2 missing from the later rounds
    assert "going on without ['worker-2']" in (tmp_path / "ps.log").read_text()


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "tdxfl", "demo", "--workdir", str(tmp_path)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert eventually(lambda: (tmp_path / "ps" / "attestation.jsonl").exists(), 120)
        os.killpg(demo.pid, signal.SIGINT)  # what a terminal's Ctrl-C does to the foreground group
        assert demo.wait(60) != 0

        def group_gone() -> bool:
            try:
                os.killpg(demo.pid, 0)
            except ProcessLookupError:
                return True
            return False

        assert eventually(group_gone, 30), "child processes survived Ctrl-C"
    finally:
        try:
            os.killpg(demo.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
