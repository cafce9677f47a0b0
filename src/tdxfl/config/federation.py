"""The federation file: one TOML document describing parties, training, attestation and policy.

Loaded into frozen dataclasses; unknown keys are errors (a typo must not silently fall back to
a default, least of all in a policy). ``--set section.key=value`` CLI overrides are applied to
the raw document before validation.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tdxfl.attestation.policy import Policy
from tdxfl.engine.kinds import Mode, OnTimeout
from tdxfl.errors import ConfigError
from tdxfl.ml.factory import Framework


@dataclass(frozen=True)
class Party:
    """One participant: its unique name, role (``ps`` or ``worker``), listening addresses, and
    where its own data is (``data``: handed to the task's ``load_data``; not part of the
    training settings every party must share)."""

    name: str
    role: str
    address: str = ""
    enroll_address: str = ""
    data_address: str = ""
    data: str = ""


@dataclass(frozen=True)
class Training:
    """What is trained and how. ``task`` names the training code (a module or a ``.py`` file
    relative to the federation file); without it, the built-in task for ``model`` / ``dataset`` /
    ``framework``. ``data_path`` is the default data location of parties without ``data``."""

    task: str = ""
    mode: Mode = Mode.SYNC_GRADIENTS
    framework: Framework = Framework.KERAS
    model: str = "small_cnn"
    dataset: str = "digits"
    data_path: str = ""
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    rounds: int = 10
    steps_per_round: int = 20
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 0.002
    momentum: float = 0.9
    seed: int = 0
    wire_dtype: str = "float32"
    target_accuracy: float = 0.0
    compression: str = "none"  # uplink updates: none, int8, int4 or topk (README "Compression")
    topk_fraction: float = 0.01  # compression = "topk": the share of each tensor's values sent
    error_feedback: bool = True  # compressed updates: the worker carries what was lost to the next


@dataclass(frozen=True)
class Faults:
    """How the parameter server copes with slow, crashed or misbehaving workers."""

    quorum: int = 0
    step_timeout_s: float = 30.0
    on_timeout: OnTimeout = OnTimeout.CONTINUE
    join_timeout_s: float = 120.0
    connect_retries: int = 20
    connect_backoff_s: float = 0.5
    max_concurrent_updates: int = 2


@dataclass(frozen=True)
class SimulatedTdConfig:
    """The identity a simulated TD claims (hex strings; ``mrtd = "auto"`` hashes the code)."""

    mrtd: str = "auto"
    rtmr0: str = ""
    rtmr1: str = ""
    rtmr2: str = ""
    rtmr3: str = ""
    debug: bool = False


@dataclass(frozen=True)
class TdxConfig:
    """Where the real TDX backend finds configfs-tsm, the RTMR3 measurement file and DCAP
    collateral."""

    configfs_path: str = "/sys/kernel/config/tsm/report"
    rtmr3_path: str = "/sys/class/misc/tdx_guest/measurements/rtmr3:sha384"
    collateral_file: str = ""
    pccs_url: str = ""
    cache_dir: str = ""


@dataclass(frozen=True)
class Attestation:
    """This party's evidence backend: ``tdx`` (real) or ``simulated`` (explicit opt-in)."""

    mode: str = "tdx"
    simulated: SimulatedTdConfig = field(default_factory=SimulatedTdConfig)
    tdx: TdxConfig = field(default_factory=TdxConfig)


@dataclass(frozen=True)
class Output:
    """Where a party writes metrics, decisions and sealed checkpoints."""

    dir: str = "runs/federation"
    checkpoint_every: int = 1
    secret_env: str = "TDXFL_MODEL_SECRET"
    seal_metrics: bool = False


@dataclass(frozen=True)
class KeyBrokerRef:
    """Where parties fetch the model key: the broker's party name, addresses and the key's name."""

    name: str = "keybroker"
    address: str = ""
    enroll_address: str = ""
    key: str = "model"


class StrategyName(enum.StrEnum):
    """``strategy.name``: how the parameter server aggregates (see README "Strategies")."""

    FEDAVG = "fedavg"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDADAGRAD = "fedadagrad"
    FEDPROX = "fedprox"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed-mean"
    KRUM = "krum"
    MULTI_KRUM = "multi-krum"


#: strategies that step a server optimizer on the pseudo-gradient, and their learning rate for 0
SERVER_OPTIMIZED = {
    StrategyName.FEDAVGM: 1.0,
    StrategyName.FEDADAM: 0.01,
    StrategyName.FEDYOGI: 0.01,
    StrategyName.FEDADAGRAD: 0.1,
}
#: strategies that aggregate with a robust rule instead of the mean
ROBUST = frozenset({StrategyName.MEDIAN, StrategyName.TRIMMED_MEAN, StrategyName.KRUM, StrategyName.MULTI_KRUM})


@dataclass(frozen=True)
class StrategyConfig:
    """``[strategy]``: the aggregation strategy and its parameters (each used by some names only)."""

    name: StrategyName = StrategyName.FEDAVG
    server_learning_rate: float = 0.0  # 0: the strategy's default (SERVER_OPTIMIZED)
    server_momentum: float = 0.9  # fedavgm
    beta1: float = 0.9  # fedadam, fedyogi, fedadagrad
    beta2: float = 0.99  # fedadam, fedyogi
    tau: float = 1e-3  # fedadam, fedyogi, fedadagrad: adaptivity
    proximal_mu: float = 0.01  # fedprox
    trim_fraction: float = 0.1  # trimmed-mean: fraction dropped on each side
    byzantine: int = 1  # krum, multi-krum: f
    krum_select: int = 0  # multi-krum: updates averaged (0: n - f)
    max_buffer_mib: int = 4096  # robust strategies: cap on the buffered updates of a step

    @property
    def effective_learning_rate(self) -> float:
        """The server learning rate (its default for this strategy where the file says 0)."""
        return self.server_learning_rate or SERVER_OPTIMIZED.get(self.name, 0.0)


@dataclass(frozen=True)
class Privacy:
    """``[privacy]``: central differential privacy in the parameter server (off unless clip_norm > 0)."""

    clip_norm: float = 0.0
    noise_multiplier: float = 0.0
    target_epsilon: float = 0.0  # instead of noise_multiplier: calibrate it to this epsilon
    delta: float = 1e-5

    @property
    def enabled(self) -> bool:
        """Whether updates are clipped and noised."""
        return self.clip_norm > 0


@dataclass(frozen=True)
class Federation:
    """A whole federation file."""

    name: str
    parties: tuple[Party, ...]
    training: Training
    faults: Faults
    attestation: Attestation
    policies: Mapping[str, Policy]
    output: Output
    keybroker: KeyBrokerRef | None = None
    #: the federation file's folder: relative task and data paths are taken from it
    base_dir: Path = Path(".")
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: Privacy = field(default_factory=Privacy)

    @property
    def ps(self) -> Party:
        """The parameter server party."""
        return next(p for p in self.parties if p.role == "ps")

    @property
    def workers(self) -> list[Party]:
        """Worker parties in file order (a worker's index is its data shard)."""
        return [p for p in self.parties if p.role == "worker"]

    def party(self, name: str) -> Party:
        """The party called ``name`` (ConfigError when absent)."""
        for p in self.parties:
            if p.name == name:
                return p
        raise ConfigError(f"no party named {name!r} in the federation file (have: {[p.name for p in self.parties]})")

    def with_ps_addresses(self, address: str, enroll_address: str, data_address: str) -> Federation:
        """This federation with the PS at other addresses (e.g. the ports a PS bound for port 0)."""
        ps = replace(self.ps, address=address, enroll_address=enroll_address, data_address=data_address)
        return replace(self, parties=tuple(ps if p.role == "ps" else p for p in self.parties))

    def policy_for(self, role: str) -> Policy:
        """The policy every party applies to peers of ``role`` (``"workers"``, ``"ps"``, ``"keybroker"``)."""
        return self.policies[role]

    @property
    def quorum(self) -> int:
        """Minimum updates per step (0 in the file means: all workers)."""
        return self.faults.quorum or len(self.workers)

    def training_digest(self, task_digest: bytes | None = None) -> str:
        """Hash of the training, strategy and privacy settings and the task's code identity
        (``task_digest``): PS and workers must agree on them (a worker so also refuses a PS that
        would aggregate otherwise, e.g. without its noise). Where each party's data lies
        (``data_path``, ``[[party]] data``) is not part of it."""
        settings: dict[str, Any] = asdict(self.training)
        del settings["data_path"]
        settings["task_digest"] = task_digest.hex() if task_digest else ""
        if task_digest and self.training.task:
            # the code's identity is the digest: not where a site keeps the file, nor the
            # built-in task's keys, which a user task does not use
            for key in ("task", "model", "dataset", "framework"):
                settings.pop(key, None)
        settings["strategy"], settings["privacy"] = asdict(self.strategy), asdict(self.privacy)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def party_data(self, name: str) -> str:
        """Where party ``name``'s data is: its ``data``, else ``training.data_path``, relative
        paths taken from the federation file's folder."""
        data = self.party(name).data or self.training.data_path
        return str(self.base_dir / data) if data and not Path(data).is_absolute() else data

    def with_party_data(self, name: str, data: str) -> Federation:
        """This federation with party ``name``'s data at ``data`` (e.g. ``--data``, made absolute)."""
        changed = replace(self.party(name), data=data)
        return replace(self, parties=tuple(changed if p.name == name else p for p in self.parties))


def _build(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{where}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(table) - set(known)
    if unknown:
        raise ConfigError(f"unknown keys in [{where}]: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        default = getattr(cls(), key) if key in known and _has_default(cls) else None
        if isinstance(default, (SimulatedTdConfig, TdxConfig)):
            kwargs[key] = _build(type(default), value, f"{where}.{key}")
            continue
        if isinstance(default, enum.Enum):
            choices = [str(m.value) for m in type(default)]
            if value not in choices:
                raise ConfigError(f"{where}.{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")
            kwargs[key] = type(default)(value)
            continue
        if default is not None and not isinstance(value, type(default)):
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            else:
                raise ConfigError(f"{where}.{key} must be {type(default).__name__}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def _has_default(cls: type) -> bool:
    try:
        cls()
    except TypeError:
        return False
    return True


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _next_port(address: str, offset: int) -> str:
    """The address ``offset`` ports above ``address`` (port 0, "any free port", stays 0)."""
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + offset if int(port) else 0}"


def parse_attestation(table: Any) -> Attestation:
    """Validate an ``[attestation]`` table (shared by federation and key-broker files)."""
    attestation: Attestation = _build(Attestation, table, "attestation")
    _check(
        attestation.mode in ("tdx", "simulated"),
        f"attestation.mode must be 'tdx' or 'simulated', got {attestation.mode!r}",
    )
    return attestation


def parse_federation(doc: Mapping[str, Any], base_dir: Path = Path(".")) -> Federation:
    """Validate a parsed TOML document into a Federation."""
    allowed = {"federation", "party", "training", "faults", "attestation", "policy", "output", "keybroker"}
    allowed |= {"strategy", "privacy"}  # parsed by parse_strategy and parse_privacy
    unknown = set(doc) - allowed
    _check(not unknown, f"unknown top-level keys: {', '.join(sorted(unknown))}")
    meta = doc.get("federation", {})
    name = meta.get("name", "federation") if isinstance(meta, Mapping) else "federation"
    parties = []
    for i, raw in enumerate(doc.get("party", [])):
        p = _build(Party, raw, f"party #{i + 1}")
        _check(p.role in ("ps", "worker"), f"party {p.name!r}: role must be 'ps' or 'worker', got {p.role!r}")
        if p.role == "ps":
            _check(":" in p.address, f'party {p.name!r}: the ps needs address = "host:port"')
            if not p.enroll_address:
                p = replace(p, enroll_address=_next_port(p.address, 1))
            if not p.data_address:
                p = replace(p, data_address=_next_port(p.address, 2))
            _check(":" in p.data_address, f'party {p.name!r}: data_address must be "host:port"')
        parties.append(p)
    names = [p.name for p in parties]
    _check(len(set(names)) == len(names), f"party names must be unique, got {names}")
    _check(sum(p.role == "ps" for p in parties) == 1, 'exactly one party must have role = "ps"')
    _check(any(p.role == "worker" for p in parties), 'at least one party must have role = "worker"')
    training = _build(Training, doc.get("training", {}), "training")
    _check(training.partition in ("iid", "dirichlet"), "training.partition must be 'iid' or 'dirichlet'")
    _check(
        training.wire_dtype in ("float32", "float16", "bfloat16"),
        f"training.wire_dtype must be 'float32', 'float16' or 'bfloat16', got {training.wire_dtype!r}",
    )
    _check(
        training.rounds > 0 and training.steps_per_round > 0 and training.batch_size > 0,
        "rounds, steps_per_round and batch_size must be positive",
    )
    faults = _build(Faults, doc.get("faults", {}), "faults")
    _check(faults.max_concurrent_updates >= 1, "faults.max_concurrent_updates must be at least 1")
    n_workers = sum(p.role == "worker" for p in parties)
    _check(0 <= faults.quorum <= n_workers, f"faults.quorum must be between 1 and the {n_workers} workers (0 = all)")
    attestation = parse_attestation(doc.get("attestation", {}))
    raw_policies = doc.get("policy", {})
    _check(isinstance(raw_policies, Mapping), "[policy] must be a table of tables")
    unknown = set(raw_policies) - {"workers", "ps", "keybroker"}
    _check(not unknown, f"unknown policy tables: {sorted(unknown)} (expected policy.workers, policy.ps)")
    keybroker = None
    if "keybroker" in doc:
        keybroker = _build(KeyBrokerRef, doc["keybroker"], "keybroker")
        _check(":" in keybroker.address, 'keybroker.address must be "host:port"')
        if not keybroker.enroll_address:
            keybroker = replace(keybroker, enroll_address=_next_port(keybroker.address, 1))
    policies: dict[str, Policy] = {}
    for role in ("workers", "ps", "keybroker") if keybroker else ("workers", "ps"):
        _check(role in raw_policies, f"[policy.{role}] is required: what parties demand of the {role}")
        try:
            policies[role] = Policy.from_dict(raw_policies[role])
        except ConfigError as e:
            raise ConfigError(f"[policy.{role}]: {e}") from e
    output = _build(Output, doc.get("output", {}), "output")
    quorum = faults.quorum or n_workers
    strategy = parse_strategy(doc.get("strategy", {}), training.mode, quorum)
    privacy = parse_privacy(doc.get("privacy", {}), strategy)
    check_compression(training, strategy)
    return Federation(
        str(name),
        tuple(parties),
        training,
        faults,
        attestation,
        policies,
        output,
        keybroker,
        base_dir,
        strategy=strategy,
        privacy=privacy,
    )


COMPRESSIONS = ("none", "int8", "int4", "topk")


def check_compression(training: Training, strategy: StrategyConfig) -> None:
    """ConfigError for a compression setting that is unknown or cannot be combined with the rest.

    Central DP clips and noises the decoded update, so every mode combines with it; the robust
    rules compare updates coordinate by coordinate (median, trimmed mean) or by distance (Krum),
    which top-k's mostly-zero changes defeat, so top-k is refused with them."""
    c = training.compression
    _check(c in COMPRESSIONS, f"training.compression must be one of {', '.join(COMPRESSIONS)}, got {c!r}")
    _check(0 < training.topk_fraction <= 1, "training.topk_fraction must be in (0, 1]")
    if c == "none":
        return
    _check(
        training.wire_dtype == "float32",
        f"training.compression = {c!r} encodes float32 updates: it cannot be combined with wire_dtype = "
        f"{training.wire_dtype!r}",
    )
    _check(
        not (c == "topk" and strategy.name in ROBUST),
        f"training.compression = 'topk' sends mostly-zero changes, which the robust rule {strategy.name.value!r} "
        "cannot compare: use int8 or int4",
    )


def parse_strategy(table: Any, mode: Mode, quorum: int) -> StrategyConfig:
    """Validate a ``[strategy]`` table for ``training.mode`` and the per-step ``quorum``."""
    s: StrategyConfig = _build(StrategyConfig, table, "strategy")
    name = s.name.value
    if mode is Mode.SYNC_GRADIENTS:
        _check(
            s.name not in SERVER_OPTIMIZED,
            f"strategy.name = {name!r} steps a server optimizer on the workers' weights: it needs training.mode = "
            f"'fedavg' (in sync-gradients mode the server's optimizer is training.optimizer)",
        )
        _check(
            s.name is not StrategyName.FEDPROX,
            "strategy.name = 'fedprox' changes the workers' local training: it needs training.mode = 'fedavg'",
        )
    _check(s.server_learning_rate >= 0, "strategy.server_learning_rate must be >= 0 (0: the strategy's default)")
    _check(0 <= s.server_momentum < 1, "strategy.server_momentum must be in [0, 1)")
    _check(0 <= s.beta1 < 1 and 0 <= s.beta2 < 1, "strategy.beta1 and strategy.beta2 must be in [0, 1)")
    _check(s.tau > 0, "strategy.tau must be positive")
    _check(s.max_buffer_mib > 0, "strategy.max_buffer_mib must be positive")
    if s.name is StrategyName.FEDPROX:
        _check(s.proximal_mu > 0, "strategy.proximal_mu must be positive for fedprox (0 would be plain fedavg)")
    if s.name is StrategyName.TRIMMED_MEAN:
        _check(0 < s.trim_fraction < 0.5, "strategy.trim_fraction must be in (0, 0.5)")
        _check(quorum >= 3, f"trimmed-mean needs a quorum of at least 3 updates per step, got {quorum}")
        _check(
            int(s.trim_fraction * quorum) >= 1,
            f"strategy.trim_fraction = {s.trim_fraction} trims nothing from {quorum} updates (the quorum): "
            f"it needs at least {1 / quorum:.3g}",
        )
    if s.name in (StrategyName.KRUM, StrategyName.MULTI_KRUM):
        f = s.byzantine
        _check(f >= 0, "strategy.byzantine must be >= 0")
        _check(
            quorum >= 2 * f + 3,
            f"{name} with strategy.byzantine = {f} needs at least {2 * f + 3} updates per step (n > 2f + 2); "
            f"the quorum is {quorum}",
        )
        if s.name is StrategyName.MULTI_KRUM:
            _check(
                0 <= s.krum_select <= quorum - f,
                f"strategy.krum_select must be 0 (n - f) or at most {quorum - f} (the quorum minus byzantine)",
            )
    return s


def parse_privacy(table: Any, strategy: StrategyConfig) -> Privacy:
    """Validate a ``[privacy]`` table (which needs an averaging ``strategy``)."""
    p: Privacy = _build(Privacy, table, "privacy")
    _check(p.clip_norm >= 0, "privacy.clip_norm must be >= 0 (0: privacy off)")
    if not p.enabled:
        return p
    _check(
        strategy.name not in ROBUST,
        f"privacy (central DP) calibrates noise to the mean: it cannot be combined with strategy.name = "
        f"{strategy.name.value!r}",
    )
    _check(
        p.noise_multiplier >= 0 and p.target_epsilon >= 0, "privacy.noise_multiplier and target_epsilon must be >= 0"
    )
    _check(
        (p.noise_multiplier > 0) != (p.target_epsilon > 0),
        "privacy.clip_norm > 0 needs exactly one of privacy.noise_multiplier and privacy.target_epsilon",
    )
    _check(0 < p.delta < 1, "privacy.delta must be in (0, 1)")
    return p


def _coerce(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(doc: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (TOML values; bare words are strings) in place."""
    for item in overrides:
        path, sep, value = item.partition("=")
        _check(bool(sep) and bool(path), f"override {item!r} must look like section.key=value")
        keys = path.strip().split(".")
        node = doc
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            _check(isinstance(node, dict), f"override {item!r}: {k} is not a table")
        node[keys[-1]] = _coerce(value.strip())
    return doc


def load_federation(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Federation:
    """Read, override and validate a federation file."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"federation file {path} not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"federation file {path} is not valid TOML: {e}") from e
    return parse_federation(apply_overrides(doc, overrides), Path(path).resolve().parent)
