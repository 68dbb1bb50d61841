"""YAML config -> validated, typed config.

Every fault is one line naming the file and the key at fault (`ConfigError`), raised before anything
is started or written.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from exmachina.data import SEMEION_DATA
from exmachina.model.activations import ACTIVATIONS, LOSSES
from exmachina.model.learning import OPTIMIZER_PARAMETERS, SCHEDULE_PARAMETERS, Optimizer, Schedule, resolved


class ConfigError(ValueError):
    """A bad config: the message is a single line, `file: key: what is wrong`."""


ActivationName = Literal["identity", "logistic", "tanh", "relu"]
Range = tuple[float, float]


@dataclass(frozen=True)
class LayerConfig:
    name: str
    size: int
    activation: ActivationName | None = None  # default: identity for the input layer, logistic after
    bias_init: Range | None = None  # default: network.bias_init ([0, 0] for the input layer)
    learn_bias: bool | None = None  # default: network.learn_biases (False for the input layer)


@dataclass(frozen=True)
class NetworkConfig:
    layers: list[LayerConfig]
    weight_init: Range = (-1.0, 1.0)
    bias_init: Range = (-1.0, 1.0)
    learn_biases: bool = True


@dataclass(frozen=True)
class TrainingConfig:
    learning_rate: float
    epochs: int
    loss: Literal["squared_error", "softmax_cross_entropy"] = "squared_error"
    target_loss: float | None = None  # stop early once an epoch's mean loss falls below this
    shuffle: bool = True
    stall_timeout: float = 30.0  # seconds without progress before a sample counts as lost
    batch_size: int = 1  # samples per synapse message; weights move by the batch mean (1: online)
    max_in_flight: int = 1  # batches in the network at once; 1 is exact SGD, more is pipelined
    # how a group of batches in flight moves the weights: each batch in turn, or once by their mean
    in_flight_step: Literal["each", "once"] = "each"
    optimizer: Optimizer = field(default_factory=Optimizer)  # or just its name: `optimizer: adam`
    schedule: Schedule = field(default_factory=Schedule)  # the rate of each update; or its name
    # a NaN or infinite loss or weight: stop the run (exit 1, the last finite model kept), or ignore it
    nan_policy: Literal["stop", "ignore"] = "stop"


@dataclass(frozen=True)
class DataConfig:
    source: Literal["xor", "and", "or", "semeion", "csv"]
    path: str | None = None  # file sources: relative to the config file; semeion default: the packaged copy
    targets: int | None = None  # csv: how many trailing columns are targets
    limit: int | None = None  # use only N rows, picked at random by the seed (quick runs)
    holdout: float = 0.0  # share of rows held out for evaluation, split by the seed


@dataclass(frozen=True)
class RuntimeConfig:
    transport: Literal["ipc", "tcp"] = "ipc"
    host: str = "127.0.0.1"  # tcp only: the address neurons bind
    # CURVE on every link (keys made per run); auto: on for tcp, off for ipc, whose sockets already
    # sit in a 0700 directory
    curve: Literal["auto", "on", "off"] = "auto"
    log_level: Literal["off", "debug", "info", "warning"] = "info"
    log_max_bytes: int = 1_000_000  # per neuron log file, before rotation
    log_backups: int = 2
    runs_dir: str = "runs"  # relative to the current directory
    stats_interval: float = 1.0  # seconds between a neuron's periodic stats
    snapshot_every: int = 100  # updates (batches) between live weight snapshots (viewer); 0: at epoch ends
    # updates (batches) between each neuron's own checkpoints, which the last epoch's end also makes;
    # 0: at every epoch's end instead
    checkpoint_every: int = 100
    max_restarts: int = 5  # restart intensity: at most this many restarts ...
    restart_period: float = 10.0  # ... within this many seconds
    # curve: off over tcp on an address other hosts reach: refused unless this says it is meant
    allow_clear_tcp: bool = False


@dataclass(frozen=True)
class PlacementConfig:
    """Where neurons run: here, under our own supervisor, or under a host agent on each of a Ray
    cluster's nodes.
    A node is named by a custom resource its `ray start --resources` declares."""

    engine: Literal["local", "ray"] = "local"
    address: str = "auto"  # ray: the cluster to join ("auto": the one `ray start` made on this host)
    rule: Literal["round_robin", "by_layer", "explicit"] = "round_robin"
    nodes: list[str] = field(default_factory=list)  # round_robin: neuron k goes to nodes[k % len]
    layers: dict[str, str] = field(default_factory=dict)  # by_layer: layer name -> node
    neurons: dict[str, str] = field(default_factory=dict)  # explicit: neuron id -> node (others: by
    # layer when `layers` is given, else round robin over `nodes`)
    # ray: node labels a lost node's neurons may move to, in order; empty: any surviving node
    fallback: list[str] = field(default_factory=list)
    max_restarts: int = 5  # ray: how many times Ray restarts a host agent that died
    # ray: seconds for every actor to start and say hello (default: 60 + 2 per neuron). Ray starts
    # worker processes a few at a time (as many as a node has CPUs), and each is slow to start.
    startup_timeout: float | None = None

    def node_of(self, neuron: str, layer: str, index: int) -> str | None:
        """The node label a neuron is pinned to (None: wherever Ray likes); index counts all neurons."""
        if neuron in self.neurons:
            return self.neurons[neuron]
        if layer in self.layers:
            return self.layers[layer]
        return self.nodes[index % len(self.nodes)] if self.nodes else None


@dataclass(frozen=True)
class Config:
    name: str
    seed: int
    network: NetworkConfig
    training: TrainingConfig
    data: DataConfig
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    source: str = field(default="<memory>", metadata={"yaml": False})  # the file, for messages

    @property
    def uses_curve(self) -> bool:
        """Whether the run's links are encrypted and authenticated with CURVE."""
        r = self.runtime
        return r.curve == "on" or (r.curve == "auto" and r.transport == "tcp")

    @property
    def startup_timeout(self) -> float:
        """Seconds the coordinator waits for every neuron's HELLO."""
        if self.placement.engine == "local":
            return STARTUP_TIMEOUT_S
        return self.placement.startup_timeout or STARTUP_TIMEOUT_S + 2.0 * sum(self.layer_sizes)

    @property
    def layer_sizes(self) -> list[int]:
        return [layer.size for layer in self.network.layers]

    def activation(self, layer: int) -> str:
        explicit = self.network.layers[layer].activation
        return explicit or ("identity" if layer == 0 else "logistic")

    def bias_init(self, layer: int) -> Range:
        explicit = self.network.layers[layer].bias_init
        if explicit is not None:
            return explicit
        return (0.0, 0.0) if layer == 0 else self.network.bias_init

    def learns_bias(self, layer: int) -> bool:
        explicit = self.network.layers[layer].learn_bias
        if explicit is not None:
            return explicit
        return False if layer == 0 else self.network.learn_biases

    def data_path(self) -> Path | None:
        if self.data.path is None:
            return SEMEION_DATA if self.data.source == "semeion" else None
        path = Path(self.data.path).expanduser()
        return path if path.is_absolute() else Path(self.source).parent / path

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as written into the run directory."""
        resolved = dataclasses.asdict(self)
        resolved.pop("source")
        path = self.data_path() if self.data.path is not None else None
        if path is not None:
            resolved["data"]["path"] = str(path.resolve())
        for i, layer in enumerate(resolved["network"]["layers"]):
            layer["activation"] = self.activation(i)
            layer["bias_init"] = list(self.bias_init(i))
            layer["learn_bias"] = self.learns_bias(i)
        return _plain(resolved)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


FILE_SOURCES = ("semeion", "csv")
STARTUP_TIMEOUT_S = 60.0  # for every neuron's hello; a Ray placement adds 2 s per neuron by default
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


MAX_NAME = 64  # a run's and a layer's name: they become file, directory and socket names


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error, not the last one wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError with one line naming file and key."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: byte {exc.start}: not a text file (UTF-8 YAML expected)") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader that refuses duplicate keys
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        problem = getattr(exc, "problem", None)
        what = problem if problem and problem.startswith("duplicate key") else "not valid YAML"
        raise ConfigError(f"{path}: {where}: {what}") from None
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: Any, source: str = "<memory>") -> Config:
    config = _build(Config, raw, "", source)
    config = dataclasses.replace(config, source=source)
    _check(config)
    t = config.training
    training = dataclasses.replace(t, optimizer=resolved(t.optimizer), schedule=resolved(t.schedule))
    return dataclasses.replace(config, training=training)


def _fail(source: str, key: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{source}: {key or 'top level'}: {message}")


def _build(cls: type, raw: Any, where: str, source: str) -> Any:
    if not isinstance(raw, dict):
        _fail(source, where, f"expected a mapping, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}
    for key in raw:
        if key not in fields:
            _fail(source, _join(where, str(key)), f"unknown key (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name in raw:
            values[name] = _coerce(raw[name], hints[name], key, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _fail(source, key, "missing required key")
    return cls(**values)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """`value` as the type `hint` asks for, checked all the way down; ConfigError naming `key` if not."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, source)
    if origin in _GENERICS:
        return _GENERICS[origin](value, args, key, source)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, str) and _named_by_default(hint):
            value = {"name": value}  # a section that is all defaults but its name: the name alone
        return _build(hint, value, key, source)
    if hint is float and isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-8 (no dot) as a string
    if hint in _SCALARS:
        accepts, expected = _SCALARS[hint]
        if not accepts(value):
            _fail(source, key, f"expected {expected}, got {value!r}")
        if hint is float and not math.isfinite(value):
            _fail(source, key, f"must be a finite number, got {value!r}")  # NaN passes most comparisons
        return float(value) if hint is float else value
    raise TypeError(f"config schema has an unsupported type {hint!r} at {key}")


def _named_by_default(cls: type) -> bool:
    """Whether a section may be written as its name alone: every key but the name has a default."""
    fields = dataclasses.fields(cls)
    return any(f.name == "name" and f.default is not dataclasses.MISSING for f in fields) and all(
        f.name == "name"
        or f.default is not dataclasses.MISSING
        or f.default_factory is not dataclasses.MISSING
        for f in fields
    )


def _coerce_literal(value: Any, args: tuple, key: str, source: str) -> Any:
    if isinstance(value, bool) and {"on", "off"} <= set(args):
        value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
    if value not in args:
        _fail(source, key, f"must be one of {', '.join(map(str, args))}, got {value!r}")
    return value


def _coerce_list(value: Any, args: tuple, key: str, source: str) -> list:
    if not isinstance(value, list):
        _fail(source, key, f"expected a list, got {_kind(value)}")
    return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]


def _coerce_dict(value: Any, args: tuple, key: str, source: str) -> dict:
    if not isinstance(value, dict):
        _fail(source, key, f"expected a mapping, got {_kind(value)}")
    return {
        _coerce(k, args[0], key, source): _coerce(v, args[1], f"{key}.{k}", source) for k, v in value.items()
    }


def _coerce_tuple(value: Any, args: tuple, key: str, source: str) -> tuple:
    if not isinstance(value, list | tuple) or len(value) != len(args):
        _fail(source, key, f"expected a list of {len(args)} numbers, got {value!r}")
    return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))


_GENERICS: dict[Any, Callable[[Any, tuple, str, str], Any]] = {
    Literal: _coerce_literal,
    list: _coerce_list,
    dict: _coerce_dict,
    tuple: _coerce_tuple,
}
# scalar type -> (whether a YAML value is one, what the message says was expected); YAML's true and
# false are ints to Python, so neither numeric type takes them
_SCALARS: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _check(c: Config) -> None:
    """Rules that span keys, each failing on the key a person would edit. They run in this order, so
    that of several faults the first one a person would look for is the one reported."""
    _check_layers(c)
    _check_bounds(c, "training")
    _check_settings(c, "optimizer", OPTIMIZER_PARAMETERS, _OPTIMIZER_BOUNDS)
    _check_settings(c, "schedule", SCHEDULE_PARAMETERS, _SCHEDULE_BOUNDS)
    _check_loss(c)
    _check_data(c)
    _check_bounds(c, "data")
    _check_runtime(c)
    _check_bounds(c, "runtime")
    _check_placement(c)
    if c.uses_curve:
        import zmq

        if not zmq.has("curve"):
            _fail(c.source, "runtime.curve", "this libzmq has no CURVE support: set curve: off")
    assert set(ACTIVATIONS) == set(typing.get_args(ActivationName))


def _positive(v: float) -> bool:
    return v > 0  # NaN is not


def _at_least(n: int) -> Callable[[float], bool]:
    return lambda v: v >= n


# Keys whose rule is a bound on their own value: section -> (key, holds, message; {} is the value).
# An optional key left out (None) passes.
_BOUNDS: dict[str, tuple[tuple[str, Callable[[Any], bool], str], ...]] = {
    "training": (
        ("learning_rate", _positive, "must be positive, got {}"),
        ("epochs", _at_least(1), "must be at least 1, got {}"),
        ("batch_size", _at_least(1), "must be at least 1, got {}"),
        ("max_in_flight", _at_least(1), "must be at least 1, got {}"),
        ("stall_timeout", _positive, "must be positive"),
        ("target_loss", lambda v: v >= 0, "must be >= 0, got {}"),
    ),
    "data": (
        ("targets", _at_least(1), "must be at least 1, got {}"),
        ("holdout", lambda v: 0.0 <= v < 1.0, "must be in [0, 1), got {}"),
        ("limit", _at_least(1), "must be at least 1, got {}"),
    ),
    "runtime": (
        ("log_backups", _at_least(1), "must be at least 1 (a log rotates into its backups), got {}"),
        ("log_max_bytes", _at_least(1024), "must be at least 1024 (bytes before a log rotates), got {}"),
        ("restart_period", _positive, "must be positive, got {}"),
        ("stats_interval", _positive, "must be positive"),
    ),
    "placement": (
        ("startup_timeout", _positive, "must be positive, got {}"),
        ("max_restarts", _at_least(0), "must be >= 0, got {}"),
    ),
}


def _in_unit(v: float) -> bool:
    return 0.0 <= v < 1.0  # NaN is not


def _finite_positive(v: float) -> bool:
    return v > 0 and math.isfinite(v)


_OPTIMIZER_BOUNDS = {
    "momentum": (_in_unit, "must be in [0, 1), got {}"),
    "beta1": (_in_unit, "must be in [0, 1), got {}"),
    "beta2": (_in_unit, "must be in [0, 1), got {}"),
    "eps": (_finite_positive, "must be a finite number above 0, got {}"),
}
_SCHEDULE_BOUNDS = {
    "warmup": (_at_least(0), "must be >= 0, got {}"),
    "every": (_at_least(1), "must be at least 1, got {}"),
    "gamma": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1], got {}"),
    "over": (_at_least(1), "must be at least 1, got {}"),
    "floor": (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1], got {}"),
}


def _check_settings(c: Config, section: str, table: dict, bounds: dict) -> None:
    """An optimizer's or a schedule's parameters: each one of its kind, in bounds, none missing."""
    settings = getattr(c.training, section)
    own = table[settings.name]
    for name, (holds, message) in bounds.items():
        key, value = f"training.{section}.{name}", getattr(settings, name)
        if value is not None and name not in own and name != "warmup":
            owners = ", ".join(k for k, params in table.items() if name in params)
            _fail(c.source, key, f"belongs to {owners}, not to {settings.name}")
        if value is None and name in own and own[name] is None:
            _fail(c.source, key, f"required by the {settings.name} {section}")
        if value is not None and not holds(value):
            _fail(c.source, key, message.format(value))


def _check_bounds(c: Config, section: str) -> None:
    for name, holds, message in _BOUNDS[section]:
        value = getattr(getattr(c, section), name)
        if value is not None and not holds(value):
            _fail(c.source, f"{section}.{name}", message.format(value))


def _check_layers(c: Config) -> None:
    """The run's name, then each layer's size, name and bias range, then the network's ranges."""
    s = c.source
    if not _NAME.match(c.name):
        _fail(s, "name", f"must match {_NAME.pattern} (it names the run directory), got {_short(c.name)}")
    if len(c.name) > MAX_NAME:
        _fail(s, "name", f"at most {MAX_NAME} characters (it names the run directory), got {len(c.name)}")
    if c.seed < 0:
        _fail(s, "seed", f"must be >= 0, got {c.seed}")
    layers = c.network.layers
    if len(layers) < 2:
        _fail(s, "network.layers", "need at least an input and an output layer")
    seen = set()
    for i, layer in enumerate(layers):
        key = f"network.layers[{i}]"
        if layer.size < 1:
            _fail(s, f"{key}.size", f"a layer needs at least one neuron, got {layer.size}")
        if not _NAME.match(layer.name):
            _fail(s, f"{key}.name", f"must match {_NAME.pattern}, got {_short(layer.name)}")
        if len(layer.name) > MAX_NAME:
            _fail(
                s, f"{key}.name", f"at most {MAX_NAME} characters (it names sockets), got {len(layer.name)}"
            )
        if layer.name in seen or layer.name == "coordinator":
            _fail(s, f"{key}.name", f"layer name {layer.name!r} is already taken")
        seen.add(layer.name)
        if layer.bias_init is not None:
            _check_range(s, f"{key}.bias_init", layer.bias_init)
    for key in ("weight_init", "bias_init"):
        _check_range(s, f"network.{key}", getattr(c.network, key))


def _check_range(source: str, key: str, value: Range) -> None:
    """A range to draw from uniformly: its ends in order, and its width a finite number."""
    lo, hi = value
    if lo > hi:
        _fail(source, key, f"low end above high end: [{lo}, {hi}]")
    if not math.isfinite(hi - lo):
        _fail(source, key, f"range too wide to draw from: [{lo}, {hi}]")


def _short(text: str) -> str:
    return repr(text) if len(text) <= 80 else f"{text[:40]!r}... ({len(text)} characters)"


def _check_loss(c: Config) -> None:
    last = len(c.network.layers) - 1
    if LOSSES[c.training.loss].needs_identity_outputs and c.activation(last) != "identity":
        _fail(
            c.source,
            f"network.layers[{last}].activation",
            f"loss {c.training.loss} takes raw logits: the output layer must use activation identity",
        )


def _check_data(c: Config) -> None:
    s, d = c.source, c.data
    if d.source in FILE_SOURCES and c.data_path() is None:
        _fail(s, "data.path", f"the {d.source} source needs a file path")
    if d.source not in FILE_SOURCES and d.path is not None:
        _fail(s, "data.path", f"the built-in source {d.source!r} takes no path")
    if (d.source == "csv") != (d.targets is not None):
        _fail(s, "data.targets", "give the number of target columns for a csv source, and only for it")


def _check_runtime(c: Config) -> None:
    s, r = c.source, c.runtime
    if r.max_restarts < 0 or r.restart_period <= 0:
        _fail(s, "runtime.max_restarts", "restart intensity needs max_restarts >= 0 and restart_period > 0")
    if r.transport == "tcp" and r.curve == "off" and not _loopback(r.host) and not r.allow_clear_tcp:
        _fail(
            s,
            "runtime.curve",
            f"off over tcp on {r.host}: anyone who reaches its ports can forge frames; set "
            "runtime.allow_clear_tcp: true on a trusted network (docs/security.md)",
        )
    if r.snapshot_every < 0 or r.checkpoint_every < 0:
        _fail(s, "runtime.checkpoint_every", "snapshot_every and checkpoint_every must be >= 0")


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_placement(c: Config) -> None:
    s, p = c.source, c.placement
    if p.engine == "local":
        for key in ("nodes", "layers", "neurons", "fallback"):
            if getattr(p, key):
                _fail(s, f"placement.{key}", "only a ray placement places neurons on nodes")
        return
    if c.runtime.transport != "tcp":
        _fail(s, "runtime.transport", "neurons on several hosts need transport: tcp (ipc is one host)")
    _check_placement_names(c)
    _check_placement_rule(c)
    _check_bounds(c, "placement")


def _check_placement_names(c: Config) -> None:
    """Every layer and neuron a ray placement names exists."""
    s, p = c.source, c.placement
    layer_names = [layer.name for layer in c.network.layers]
    for name in p.layers:
        if name not in layer_names:
            _fail(s, f"placement.layers.{name}", f"no such layer (layers: {', '.join(layer_names)})")
    ids = {f"{layer.name}.{i}" for layer in c.network.layers for i in range(layer.size)}
    for nid in p.neurons:
        if nid not in ids:
            _fail(s, f"placement.neurons.{nid}", "no such neuron (ids are layer.index, e.g. hidden.0)")


def _check_placement_rule(c: Config) -> None:
    """A ray placement's rule has what it deals neurons by."""
    s, p = c.source, c.placement
    if p.rule == "round_robin" and not p.nodes:
        _fail(s, "placement.nodes", "round_robin needs the list of node labels to deal neurons over")
    if p.rule == "by_layer":
        missing = [layer.name for layer in c.network.layers if layer.name not in p.layers]
        if missing:
            _fail(
                s, "placement.layers", f"by_layer needs a node for each layer, none for {', '.join(missing)}"
            )
    if p.rule == "explicit" and not p.neurons:
        _fail(s, "placement.neurons", "explicit needs a mapping of neuron id -> node label")
