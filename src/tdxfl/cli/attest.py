"""``tdxfl attest`` and ``tdxfl verify-quote``: this TD's measurements, and checking evidence.

``attest`` quotes zero REPORTDATA and prints the measurements with a policy block that pins
them (paste it into the peers' configuration); with ``--task PATH`` it also prints the task
code's digest, pins it (``task = [...]``) and pins RTMR3 as it will be once the party has
measured that task into it. It never extends RTMR3 itself. ``verify-quote`` verifies a raw quote
file or an RA-TLS certificate against DCAP collateral and a policy and prints the decision (with
the task digest a certificate's evidence claims, its RTMR3 event log replayed); its exit status
is 0 when accepted and 3 (:mod:`tdxfl.cli.exits`) when refused.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import click

from tdxfl.attestation.code_identity import digest_task
from tdxfl.attestation.eventlog import plan_extension
from tdxfl.attestation.interfaces import REPORT_DATA_SIZE, Attester, VerifiedEvidence
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.report import parse_quote
from tdxfl.cli.exits import EXIT_CODES, EXIT_OK, handle_errors
from tdxfl.errors import AttestationError, AttestationRefused, ConfigError


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        if len(value) <= 1:
            return "[" + "".join(_toml_value(v) for v in value) + "]"
        return "[\n" + "".join(f"    {_toml_value(v)},\n" for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def policy_toml(policy: Policy) -> str:
    """``policy`` as TOML key/value lines (a table body that ``Policy.from_dict`` reads back)."""
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in policy.to_dict().items())


def _attester(configfs: str | None, simulated: bool) -> Attester:
    if simulated:
        from tdxfl.attestation.insecure_simulated import SimulatedAttester

        return SimulatedAttester()
    from tdxfl.attestation.tdx.configfs import DEFAULT_ROOT, TdxAttester

    return TdxAttester(configfs or DEFAULT_ROOT)


@click.command("attest")
@click.option("--configfs", type=click.Path(file_okay=False), help="configfs-tsm report directory.")
@click.option("--simulated", is_flag=True, help="Use the simulated TD (development only; proves nothing).")
@click.option(
    "--task",
    "task_path",
    type=click.Path(exists=True, path_type=Path),
    help="Task code (a .py file or a package directory): print its digest and pin it.",
)
@handle_errors("tdxfl attest")
def attest(configfs: str | None, simulated: bool, task_path: Path | None) -> None:
    """Print this TD's measurements and a TOML policy block that pins them."""
    attester = _attester(configfs, simulated)
    report = parse_quote(attester.quote(bytes(REPORT_DATA_SIZE))).report
    click.echo(f"# {attester.tee} TD measurements")
    for key, value in report.to_dict().items():
        if key != "report_data":
            shown = ", ".join(value) or "none" if isinstance(value, list) else value
            click.echo(f"# {key:<18} {shown}")
    rtmr3 = report.rtmrs[3]
    task = None
    if task_path is not None:
        task = digest_task(task_path)
        click.echo(f"# {'task':<18} {task.hex()}")
        if not attester.can_extend_rtmr3:
            click.echo("# RTMR3 is not extensible here (needs Linux >= 6.16): the task is pinned by its claim only.")
        elif (plan := plan_extension(rtmr3, task)).log is None:
            click.echo("# RTMR3 holds events of other software: the party will not extend it with the task.")
        else:
            rtmr3 = plan.result
            click.echo(f"# {'rtmr3 with task':<18} {rtmr3.hex()}")
    policy = Policy(
        tee=frozenset({attester.tee}),
        mrtd=frozenset({report.mrtd}),
        rtmr0=frozenset({report.rtmrs[0]}),
        rtmr1=frozenset({report.rtmrs[1]}),
        rtmr2=frozenset({report.rtmrs[2]}),
        rtmr3=frozenset({rtmr3}),
        task=None if task is None else frozenset({task}),
    )
    click.echo("# Policy admitting exactly this TD; paste it into the peers' policy table.")
    if attester.tee == "tdx":
        click.echo("# Cloud TDX hosts usually need allow_dynamic_platform/allow_cached_keys/allow_smt = true.")
    click.echo(policy_toml(policy), nl=False)


def parse_time(value: str) -> int:
    """Unix seconds from ``value``: an integer, or ISO 8601 (UTC when no offset is given)."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise click.BadParameter(f"{value!r} is neither unix seconds nor ISO 8601") from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


def load_policy(path: str | None, table: str | None) -> Policy:
    """The policy in TOML file ``path`` (its top level, or the dotted ``table`` in it)."""
    if path is None:
        return Policy(mrtd=None)
    try:
        data: Any = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        for part in (table or "").split(".") if table else ():
            data = data[part]
        if not isinstance(data, dict):
            raise ConfigError(f"{table!r} is not a table")
        return Policy.from_dict(data)
    except (OSError, tomllib.TOMLDecodeError, KeyError, ConfigError) as e:
        raise click.BadParameter(f"{path}: {e}", param_hint="--policy") from e


def _evidence_summary(ev: VerifiedEvidence) -> dict[str, Any]:
    return {
        "tee": ev.tee,
        "tcb_status": ev.tcb_status,
        "advisory_ids": list(ev.advisory_ids),
        "platform": {
            "dynamic_platform": ev.platform.dynamic_platform,
            "cached_keys": ev.platform.cached_keys,
            "smt_enabled": ev.platform.smt_enabled,
        },
        "report": ev.report.to_dict(),
        "task": ev.task.hex() if ev.task is not None else None,
        "rtmr3_log": [e.hex() for e in ev.rtmr3_log] if ev.rtmr3_log is not None else None,
    }


def _verify(
    data: bytes, collateral: str | None, pccs_url: str | None, cache_dir: str | None, now: int | None, policy: Policy
) -> tuple[VerifiedEvidence, str]:
    """Verify a raw quote or an RA-TLS certificate at unix time ``now`` (None: the current time),
    the same time for the quote and the certificate; return the evidence and what was checked."""
    from tdxfl.attestation import ratls
    from tdxfl.attestation.decisions import DecisionLog
    from tdxfl.attestation.interfaces import Verifier
    from tdxfl.attestation.tdx.collateral import collateral_source
    from tdxfl.attestation.tdx.dcap import TdxVerifier

    at = now if now is not None else int(time.time())
    when = dt.datetime.fromtimestamp(at, dt.UTC)
    source = collateral_source(collateral, pccs_url, cache_dir, hint="give --collateral FILE or --pccs-url URL")
    tdx = TdxVerifier(source, as_of=at)
    stripped = data.lstrip()
    if not (stripped.startswith(b"-----BEGIN") or data[:1] == b"\x30"):
        return tdx.verify(data), "quote"
    cert = ratls.load_certificate(data)
    verifiers: list[Verifier] = [tdx]
    if "simulated" in policy.tee:  # the insecure verifier only where the policy admits its evidence
        from tdxfl.attestation.insecure_simulated import SimulatedVerifier

        verifiers.append(SimulatedVerifier())
    checker = ratls.PeerVerifier("verify-quote", policy, verifiers, DecisionLog(), now=lambda: when)
    return checker.verify_certificate(cert), "certificate (key binding and REPORTDATA checked)"


@click.command("verify-quote")
@click.argument("quote", type=click.Path(exists=True, dir_okay=False))
@click.option("--collateral", type=click.Path(exists=True, dir_okay=False), help="Collateral JSON file.")
@click.option("--pccs-url", help="PCCS/PCS base URL to fetch collateral from (cached on disk).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Collateral cache directory.")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False), help="Policy TOML file.")
@click.option("--policy-table", help="Dotted name of the policy table inside the --policy file.")
@click.option("--as-of", "as_of", help="Verify at this time (ISO 8601 or unix seconds) instead of now.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@handle_errors("tdxfl verify-quote")
def verify_quote(
    quote: str,
    collateral: str | None,
    pccs_url: str | None,
    cache_dir: str | None,
    policy_file: str | None,
    policy_table: str | None,
    as_of: str | None,
    as_json: bool,
) -> None:
    """Verify QUOTE (a raw TDX quote, or a PEM/DER RA-TLS certificate) and judge it by policy.

    Without --policy, the strict default policy applies with any MRTD. Exit status: 0 accepted,
    3 refused.
    """
    now = parse_time(as_of) if as_of is not None else None
    policy = load_policy(policy_file, policy_table)
    data = Path(quote).read_bytes()
    verified: VerifiedEvidence | None = None
    what = "evidence"
    try:
        verified, what = _verify(data, collateral, pccs_url, cache_dir, now, policy)
        reasons = policy.evaluate(verified)
    except AttestationError as e:
        reasons = [str(e)]
    accepted = not reasons
    if as_json:
        out: dict[str, Any] = {"accepted": accepted, "reasons": reasons, "checked": what}
        if verified is not None:
            out["evidence"] = _evidence_summary(verified)
        click.echo(json.dumps(out, indent=2))
    else:
        if verified is not None:
            r = verified.report
            click.echo(f"checked:     {what}")
            click.echo(f"tee:         {verified.tee}")
            click.echo(f"tcb status:  {verified.tcb_status} advisories: {', '.join(verified.advisory_ids) or 'none'}")
            p = verified.platform
            click.echo(f"platform:    dynamic={p.dynamic_platform} cached_keys={p.cached_keys} smt={p.smt_enabled}")
            click.echo(f"mrtd:        {r.mrtd.hex()}")
            click.echo(f"attributes:  {', '.join(r.attribute_names()) or 'none'}")
            if verified.task is not None:
                replayed = (
                    ""
                    if verified.rtmr3_log is None
                    else f" (RTMR3 event log of {len(verified.rtmr3_log)} event(s) replayed)"
                )
                click.echo(f"task:        {verified.task.hex()}{replayed}")
        if accepted:
            click.echo("ACCEPTED")
        else:
            click.echo("REFUSED: " + "; ".join(reasons))
    sys.exit(EXIT_OK if accepted else EXIT_CODES[AttestationRefused])


COMMANDS: list[click.Command] = [attest, verify_quote]
