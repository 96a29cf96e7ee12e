"""Peer configuration: one TOML file per peer, loaded into frozen dataclasses.

A config file has one ``[peer]`` table (node settings) and one ``[[models]]`` table per hosted
model. Relative paths (``data_dir``, ``cache_dir``, a ``factory`` given as ``file.py:function``,
a ``torchscript`` file, a ``huggingface`` directory) are relative to the config file. A model comes
from exactly one of ``factory``, ``torchscript`` or ``huggingface``; ``[models.contract]`` declares
its inputs and outputs (required for TorchScript, an override for Hugging Face). ``peers/*.toml`` are annotated examples::

    [peer]
    name = "small"
    port = 0                       # 0 = any free port

    [[models]]
    model_id = "digits-small"
    capabilities = ["classify/digits"]
    factory = "digits.py:small"    # or "package.module:function"
    price_per_example = 0.001
    strategy = "confidence"
    extra_latency_ms = 0           # simulated slower hardware: added to every call
    [models.constraints]
    max_batch = 256

Every mistake raises :class:`~atomic_p2p.errors.ConfigError` naming the file, the table and the
key, and saying what to write instead.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from atomic_p2p.contract import Dim, ModelContract, TaskKind, TensorContract
from atomic_p2p.errors import ConfigError
from atomic_p2p.faults import FaultPlan
from atomic_p2p.guard import DEFAULT_GUARD, GuardConfig, Rate
from atomic_p2p.peer.strategies import STRATEGIES, make_strategy
from atomic_p2p.terms import ModelConstraints, Resources

MIB = 1024 * 1024
# Tensors are capped at 64 MiB each (atomic_p2p.tensors); a message also carries envelopes, names,
# shapes and sometimes a second small tensor, so the cap leaves 8 MiB of headroom (docs/protocol.md).
DEFAULT_MAX_MESSAGE_BYTES = 72 * MIB
DEFAULT_MAX_TASKS = 64
# What a model's [models.constraints] and [models.resources] mean when left out: batches of up to
# 256, and one CPU core per call. No token limit, any language, no memory declared (0: not declared).
DEFAULT_CONSTRAINTS = ModelConstraints(max_batch=256)
DEFAULT_RESOURCES = Resources(cpu_cores=1.0)


@dataclass(frozen=True, slots=True)
class GradientConfig:
    """``[models.gradient]``: gradient bidding (docs/gradient.md, docs/protocol.md BidGradient)."""

    enabled: bool = False
    role: str = "cooperative"  # descend the requester's loss, or "competitive": ascend own payoff
    bid_function: str = "scalar"  # one learnable bid, or "ffnn": a small network of the input
    lr: float = 0.01
    max_norm: float = 1.0  # received gradients are clipped to this L2 norm
    reject_norm: float = 100.0  # and refused (RESOURCE_EXHAUSTED) above this one
    initial_bid: float = 1.0
    hidden: int = 16  # ffnn width
    cost_per_bid: float = 0.0  # competitive: what a unit of bid costs the peer
    seed: int = 0  # initialises an ffnn bid function
    remote_training: bool = False  # accept dL/dy and train the model on it
    model_lr: float = 0.001  # SGD step for remote training
    # Pull the mean log-bid of each batch toward log(anchor) (0: off); docs/gradient.md.
    anchor: float = 0.0
    anchor_weight: float = 1.0


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model_id: str
    capabilities: tuple[str, ...]
    # "package.module:function", or "/absolute/path/file.py:function" (relative paths are resolved
    # against the config file when it is loaded); "" when the model comes from a file below
    # (from Python: ModelConfig(..., factory="", huggingface=Path("dir"), ...)).
    factory: str
    price_per_example: float
    strategy: str = "confidence"
    strategy_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # Keyword arguments for the factory (hyperparameters, seeds).
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    constraints: ModelConstraints = DEFAULT_CONSTRAINTS  # what the model accepts, and enforces
    resources: Resources = DEFAULT_RESOURCES  # what one call takes from the host
    # Simulates slower hardware: every call sleeps this long after the forward pass, and bids
    # quote it. Lets one machine host a "slow" and a "fast" peer for tests and demos.
    extra_latency_ms: float = 0.0
    # Free text for people (e.g. "digits 0-4 only"); machines read the capabilities.
    domain: str = ""
    gradient: GradientConfig = GradientConfig()
    # Instead of a factory: a TorchScript file (needs a contract) or a Hugging Face directory
    # (model and tokenizer, loaded from local files only); absolute once loaded from TOML.
    torchscript: Path | None = None
    huggingface: Path | None = None
    # [models.contract]: the model's inputs, outputs and kind (a factory declares its own).
    contract: ModelContract | None = None

    def __post_init__(self) -> None:
        given = [name for name in _SOURCES if getattr(self, name)]
        if len(given) != 1:
            raise ConfigError(
                f"model {self.model_id}: give exactly one of factory, torchscript or huggingface, got "
                + (", ".join(given) if given else "none")
            )
        if self.options and not self.factory:
            raise ConfigError(
                f"model {self.model_id}: options are keyword arguments for a factory; "
                "a torchscript or huggingface model takes none, so remove [models.options]"
            )
        if self.torchscript is not None and self.contract is None:
            raise ConfigError(
                f"model {self.model_id}: a torchscript model needs a [models.contract] table "
                "(kind and [[models.contract.inputs]]); see docs/cli.md"
            )


_SOURCES = ("factory", "torchscript", "huggingface")


@dataclass(frozen=True, slots=True)
class PeerConfig:
    name: str
    models: tuple[ModelConfig, ...]
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    # Trained-weight cache; None means data_dir / "models".
    cache_dir: Path | None = None
    max_concurrency: int = 2
    queue_limit: int = 32
    # torch intra-op threads for this process; 0: the cores divided among max_concurrency workers.
    torch_threads: int = 0
    replay_window_s: float = 30.0
    bid_validity_s: float = 10.0
    # > 0: every bid says the requester may reuse it this long (never past its validity) for the
    # same capability and input shape, until this node's gossip record changes. 0: bids are single-use.
    bid_reuse_ttl_s: float = 0.0
    # A model no order has run for this long is re-timed on warm-up inputs, so its latency quote
    # follows the node's current load (atomic_p2p.peer.latency). 0: never.
    latency_probe_s: float = 30.0
    max_tasks_per_request: int = DEFAULT_MAX_TASKS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Request ids, issued bids and results remembered at once (each table); beyond that, new work
    # is refused with RESOURCE_EXHAUSTED rather than forgetting something a replay check needs.
    max_remembered: int = 100_000
    # Serve plaintext and talk to plaintext peers (atomic-peer --insecure; debugging only, not
    # TOML): by default the node serves TLS bound to its key and refuses plaintext peers.
    insecure: bool = False
    # Gossip (docs/gossip.md): seed addresses (``host:port`` or ``PEERID@host:port``) to join through, the address others should dial
    # (default: the bound address; set it when listening on a wildcard), round interval and fanout.
    bootstrap: tuple[str, ...] = ()
    advertise: str | None = None
    gossip_interval_s: float = 1.0
    gossip_fanout: int = 3
    # Delay, jitter and loss injected into this node's outgoing calls (atomic_p2p.faults); set by
    # atomic-peer's --fault-* flags, not by TOML. None: read ATOMIC_P2P_FAULTS.
    faults: FaultPlan | None = None
    # [peer.guard]: limits per source address and prefix, fair shares (docs/security.md).
    guard: GuardConfig = DEFAULT_GUARD

    @property
    def weights_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.data_dir / "models"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "key.pem"

    def with_overrides(self, **changes: Any) -> PeerConfig:
        """A copy with some fields replaced (``None`` values are ignored: "not given")."""
        return replace(self, **{key: value for key, value in changes.items() if value is not None})

    @classmethod
    def from_toml(cls, path: str | Path) -> PeerConfig:
        return load_config(path)


_PEER_KEYS = {
    "name",
    "host",
    "port",
    "data_dir",
    "cache_dir",
    "max_concurrency",
    "queue_limit",
    "torch_threads",
    "replay_window_s",
    "bid_validity_s",
    "bid_reuse_ttl_s",
    "latency_probe_s",
    "max_tasks_per_request",
    "max_message_bytes",
    "max_remembered",
    "bootstrap",
    "advertise",
    "gossip_interval_s",
    "gossip_fanout",
    "guard",
}
_MODEL_KEYS = {
    "gradient",
    "model_id",
    "capabilities",
    "factory",
    "price_per_example",
    "strategy",
    "strategy_options",
    "options",
    "constraints",
    "resources",
    "extra_latency_ms",
    "domain",
    "torchscript",
    "huggingface",
    "contract",
}


def load_config(path: str | Path) -> PeerConfig:
    """Read one TOML config file."""
    path = Path(path).expanduser().resolve()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass the path to a peer TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return config_from_dict(data, base_dir=path.parent, source=str(path))


def load_configs(paths: Sequence[str | Path]) -> PeerConfig:
    """Several files, one node: node settings from the first, models from all (ids must differ)."""
    if not paths:
        raise ConfigError("no config file given; pass at least one peer TOML file")
    configs = [load_config(path) for path in paths]
    return merge(configs)


def merge(configs: Sequence[PeerConfig]) -> PeerConfig:
    models: list[ModelConfig] = []
    for config in configs:
        for model in config.models:
            if any(model.model_id == seen.model_id for seen in models):
                raise ConfigError(
                    f"model_id {model.model_id!r} appears in more than one config; give each model its own id"
                )
            models.append(model)
    return replace(configs[0], models=tuple(models))


def config_from_dict(data: Mapping[str, Any], base_dir: Path, source: str = "config") -> PeerConfig:
    _reject_unknown(data, {"peer", "models"}, source, "top level")
    settings = _peer_settings(_table(data, "peer", source, "top level"), base_dir, source)
    model_tables = data.get("models", [])
    if not isinstance(model_tables, list) or not model_tables:
        raise ConfigError(f"{source}: add at least one [[models]] table (a model this peer hosts)")
    models = tuple(
        _model(table, base_dir, f"{source} [[models]] #{index + 1}")
        for index, table in enumerate(model_tables)
    )
    return merge([PeerConfig(models=models, **settings)])  # merge checks that model ids differ


def _peer_settings(peer: Mapping[str, Any], base_dir: Path, source: str) -> dict[str, Any]:
    _reject_unknown(peer, _PEER_KEYS, source, "[peer]")
    where = f"{source} [peer]"
    name = _string(peer, "name", where, default=None)
    return {
        "name": name,
        "data_dir": _path(peer, "data_dir", base_dir, where) or Path.home() / ".atomic-p2p" / name,
        "host": _string(peer, "host", where, default="127.0.0.1"),
        "port": _integer(peer, "port", where, default=0, low=0, high=65535),
        "cache_dir": _path(peer, "cache_dir", base_dir, where),
        "max_concurrency": _integer(peer, "max_concurrency", where, default=2, low=1),
        "queue_limit": _integer(peer, "queue_limit", where, default=32, low=0),
        "torch_threads": _integer(peer, "torch_threads", where, default=0, low=0),
        "replay_window_s": _number(peer, "replay_window_s", where, default=30.0, low=0.001),
        "bid_validity_s": _number(peer, "bid_validity_s", where, default=10.0, low=0.001),
        "bid_reuse_ttl_s": _number(peer, "bid_reuse_ttl_s", where, default=0.0, low=0.0),
        "latency_probe_s": _number(peer, "latency_probe_s", where, default=30.0, low=0.0),
        "max_tasks_per_request": _integer(
            peer, "max_tasks_per_request", where, default=DEFAULT_MAX_TASKS, low=1
        ),
        "max_message_bytes": _integer(
            peer, "max_message_bytes", where, default=DEFAULT_MAX_MESSAGE_BYTES, low=1024
        ),
        "max_remembered": _integer(peer, "max_remembered", where, default=100_000, low=1),
        "bootstrap": _addresses(peer, "bootstrap", where),
        "advertise": peer.get("advertise") and _string(peer, "advertise", where, default=None),
        "gossip_interval_s": _number(peer, "gossip_interval_s", where, default=1.0, low=0.01),
        "gossip_fanout": _integer(peer, "gossip_fanout", where, default=3, low=1),
        "guard": _guard(_table(peer, "guard", source, "[peer]"), f"{source} [peer.guard]"),
    }


_GUARD_RATES = ("address_calls", "prefix_calls", "address_gossip", "prefix_gossip")
_GUARD_NUMBERS = ("bid_share_per_prefix", "newcomer_bid_share")
_GUARD_INTEGERS = ("max_pending_calls", "max_sources")


def _guard(table: Mapping[str, Any], where: str) -> GuardConfig:
    """``[peer.guard]``: each rate as ``name = [per_s, burst]``, shares and counts as numbers."""
    _reject_unknown(table, {*_GUARD_RATES, *_GUARD_NUMBERS, *_GUARD_INTEGERS}, where, "")
    values: dict[str, Any] = {}
    for key in _GUARD_RATES:
        if key in table:
            rate = table[key]
            if not (isinstance(rate, list) and len(rate) == 2 and all(_is_number(x) for x in rate)):
                raise ConfigError(f"{where}: {key} must be [per_second, burst], e.g. {key} = [100.0, 200.0]")
            values[key] = Rate(float(rate[0]), float(rate[1]))
    for key in _GUARD_NUMBERS:
        if key in table:
            values[key] = _number(table, key, where, default=0.0, low=0.0)
    for key in _GUARD_INTEGERS:
        if key in table:
            values[key] = _integer(table, key, where, default=1, low=1)
    try:
        return GuardConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _addresses(table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(a, str) and ":" in a for a in value):
        raise ConfigError(f'{where}: {key} must be a list of "host:port" strings, e.g. ["127.0.0.1:50051"]')
    return tuple(value)


def _model(table: Any, base_dir: Path, where: str) -> ModelConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: each [[models]] entry must be a table")
    _reject_unknown(table, _MODEL_KEYS, where, "")
    capabilities = table.get("capabilities")
    if (
        not isinstance(capabilities, list)
        or not capabilities
        or not all(isinstance(c, str) and c for c in capabilities)
    ):
        raise ConfigError(
            f'{where}: capabilities must be a non-empty list of strings, e.g. ["classify/digits"]'
        )
    strategy = _string(table, "strategy", where, default="confidence")
    strategy_options = _table(table, "strategy_options", where, "")
    if strategy not in STRATEGIES:
        raise ConfigError(f"{where}: strategy {strategy!r} is unknown; use one of {sorted(STRATEGIES)}")
    try:
        make_strategy(strategy, strategy_options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    model_id = _string(table, "model_id", where, default=None)
    sources = [name for name in _SOURCES if name in table]
    if len(sources) != 1:
        raise ConfigError(
            f"{where}: model {model_id!r} needs exactly one of factory, torchscript or huggingface, got "
            + (", ".join(sources) if sources else "none")
        )
    fields = dict(
        factory=_factory(table, base_dir, where) if "factory" in table else "",
        torchscript=_existing(table, "torchscript", base_dir, where, "a TorchScript file"),
        huggingface=_existing(table, "huggingface", base_dir, where, "a Hugging Face directory"),
        contract=_contract(table, where),
        **_model_terms(table, where, strategy, strategy_options),
    )
    try:
        return ModelConfig(model_id=model_id, capabilities=tuple(capabilities), **fields)
    except ConfigError as exc:  # the checks every ModelConfig makes, now with the file and table
        raise ConfigError(f"{where}: {exc}") from None


def _model_terms(
    table: Mapping[str, Any], where: str, strategy: str, strategy_options: dict[str, Any]
) -> dict[str, Any]:
    return dict(
        price_per_example=_number(table, "price_per_example", where, default=None, low=0.0),
        strategy=strategy,
        strategy_options=strategy_options,
        options=_table(table, "options", where, ""),
        constraints=_constraints(_table(table, "constraints", where, ""), f"{where} constraints"),
        resources=_resources(_table(table, "resources", where, ""), f"{where} resources"),
        extra_latency_ms=_number(table, "extra_latency_ms", where, default=0.0, low=0.0),
        domain=_string(table, "domain", where, default=""),
        gradient=_gradient(_table(table, "gradient", where, ""), f"{where} gradient"),
    )


def _existing(table: Mapping[str, Any], key: str, base_dir: Path, where: str, what: str) -> Path | None:
    path = _path(table, key, base_dir, where)
    if path is not None and not path.exists():
        raise ConfigError(f"{key} {path} does not exist; name {what} (paths are relative to the config)")
    return path


def _contract(table: Mapping[str, Any], where: str) -> ModelContract | None:
    """``[models.contract]``: ``kind``, ``[[models.contract.inputs]]`` and optional outputs."""
    if "contract" not in table:
        return None
    contract = _table(table, "contract", where, "")
    where = f"{where} contract"
    _reject_unknown(contract, {"kind", "inputs", "outputs"}, where, "")
    kinds = [kind.value for kind in TaskKind]
    kind = _string(contract, "kind", where, default=None)
    if kind not in kinds:
        raise ConfigError(f"{where}: kind must be one of {', '.join(kinds)}, got {kind!r}")
    try:
        return ModelContract(
            TaskKind(kind),
            tuple(_tensor(entry, f"{where} inputs") for entry in contract.get("inputs", [])),
            tuple(_tensor(entry, f"{where} outputs") for entry in contract.get("outputs", [])),
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _tensor(entry: Any, where: str) -> TensorContract:
    """One ``{name = "x", dtype = "float32", dims = [64, [1, 128]]}``: a size is fixed, a pair is min, max."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: each entry is a table with name, dtype and dims")
    _reject_unknown(entry, {"name", "dtype", "dims"}, where, "")
    dims = entry.get("dims")
    if not isinstance(dims, list) or not all(_is_dim(dim) for dim in dims):
        raise ConfigError(
            f"{where}: dims must be a list of sizes or [min, max] pairs per example, e.g. [64] or [[1, 128]]"
        )
    try:
        shape = tuple(Dim.fixed(dim) if isinstance(dim, int) else Dim(*dim) for dim in dims)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return TensorContract(
        _string(entry, "name", where, default=None), _string(entry, "dtype", where, default="float32"), shape
    )


def _is_dim(dim: Any) -> bool:
    if isinstance(dim, list):
        return len(dim) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in dim)
    return isinstance(dim, int) and not isinstance(dim, bool)


def _factory(table: Mapping[str, Any], base_dir: Path, where: str) -> str:
    text = _string(table, "factory", where, default=None)
    target, _, function = text.rpartition(":")
    if not target or not function.isidentifier():
        raise ConfigError(
            f"{where}: factory {text!r} must be 'package.module:function' or 'file.py:function'"
        )
    if target.endswith(".py") or "/" in target:
        file = (base_dir / target).resolve()
        if not file.is_file():
            raise ConfigError(
                f"{where}: factory file {file} does not exist (paths are relative to the config)"
            )
        return f"{file}:{function}"
    return text


def _constraints(table: Mapping[str, Any], where: str) -> ModelConstraints:
    _reject_unknown(table, {"max_batch", "max_input_tokens", "supported_languages"}, where, "")
    languages = table.get("supported_languages", [])
    if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
        raise ConfigError(f'{where}: supported_languages must be a list of strings, e.g. ["en"]')
    default = DEFAULT_CONSTRAINTS
    return ModelConstraints(
        max_batch=_integer(table, "max_batch", where, default=default.max_batch, low=1),
        max_input_tokens=_integer(table, "max_input_tokens", where, default=default.max_input_tokens, low=0),
        supported_languages=tuple(languages),
    )


_GRADIENT_CHOICES = {"role": ("cooperative", "competitive"), "bid_function": ("scalar", "ffnn")}


def _gradient(table: Mapping[str, Any], where: str) -> GradientConfig:
    _reject_unknown(table, set(GradientConfig.__slots__), where, "")
    for key in ("enabled", "remote_training"):
        if not isinstance(table.get(key, False), bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {table[key]!r}")
    choices = {}
    for key, allowed in _GRADIENT_CHOICES.items():
        choices[key] = _string(table, key, where, default=allowed[0])
        if choices[key] not in allowed:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}, got {choices[key]!r}")
    config = GradientConfig(
        enabled=table.get("enabled", False),
        role=choices["role"],
        bid_function=choices["bid_function"],
        lr=_number(table, "lr", where, default=0.01, low=0.0),
        max_norm=_number(table, "max_norm", where, default=1.0, low=1e-12),
        reject_norm=_number(table, "reject_norm", where, default=100.0, low=1e-12),
        initial_bid=_number(table, "initial_bid", where, default=1.0, low=1e-6),
        hidden=_integer(table, "hidden", where, default=16, low=1),
        cost_per_bid=_number(table, "cost_per_bid", where, default=0.0, low=0.0),
        seed=_integer(table, "seed", where, default=0, low=0),
        remote_training=table.get("remote_training", False),
        model_lr=_number(table, "model_lr", where, default=0.001, low=0.0),
        anchor=_number(table, "anchor", where, default=0.0, low=0.0),
        anchor_weight=_number(table, "anchor_weight", where, default=1.0, low=0.0),
    )
    if config.reject_norm < config.max_norm:
        raise ConfigError(f"{where}: reject_norm must be >= max_norm (clip below it, refuse above it)")
    return config


def _resources(table: Mapping[str, Any], where: str) -> Resources:
    _reject_unknown(table, {"cpu_cores", "memory_mb", "gpu_memory_mb"}, where, "")
    default = DEFAULT_RESOURCES
    return Resources(
        cpu_cores=_number(table, "cpu_cores", where, default=default.cpu_cores, low=0.0),
        memory_mb=_number(table, "memory_mb", where, default=default.memory_mb, low=0.0),
        gpu_memory_mb=_number(table, "gpu_memory_mb", where, default=default.gpu_memory_mb, low=0.0),
    )


# --- typed field readers: each names the key and the fix -------------------------------------


def _reject_unknown(table: Mapping[str, Any], allowed: set[str], source: str, what: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{source} {what}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(allowed))}"
        )


def _table(table: Mapping[str, Any], key: str, source: str, what: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source} {what}: {key} must be a table ([{key}] or {key} = {{...}})")
    return value


def _string(table: Mapping[str, Any], key: str, where: str, default: str | None) -> str:
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"{where}: {key} is required (a string)")
    if not isinstance(value, str) or (default is None and not value):
        raise ConfigError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _number(table: Mapping[str, Any], key: str, where: str, default: float | None, low: float) -> float:
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"{where}: {key} is required (a number >= {low})")
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < low
    ):
        raise ConfigError(f"{where}: {key} must be a number >= {low}, got {value!r}")
    return float(value)


def _integer(
    table: Mapping[str, Any], key: str, where: str, default: int, low: int, high: int | None = None
) -> int:
    value = table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise ConfigError(f"{where}: {key} must be an integer {bounds}, got {value!r}")
    return value


def _path(table: Mapping[str, Any], key: str, base_dir: Path, where: str) -> Path | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a path string")
    return (base_dir / Path(value).expanduser()).resolve()
