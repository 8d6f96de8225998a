"""The one deployment configuration: built once per process, read by everything that decides.

A :class:`Deployment` holds the use case (its tables carrying their effective gate
thresholds), the promotion and retraining policies, where models are tracked, how many
threads training uses and the serving keys. :func:`current` builds it from three layers, each
overriding the one before:

1. the use case module's defaults (``UseCase.deployment``, in keel.toml's shape);
2. ``$KEEL_HOME/keel.toml``, or the file ``KEEL_CONFIG`` names;
3. the environment variables (``keel.core.env``): ``KEEL_PROMOTION_POLICY``,
   ``KEEL_TRAIN_THREADS``, ``KEEL_MLFLOW_TRACKING_URI``, ``KEEL_MLFLOW_EXPERIMENT``,
   ``KEEL_USECASE``.

The file's sections are ``[promotion]``, ``[retraining]``, ``[gates]`` (every table) and
``[gates.<table>]`` (one table, over ``[gates]``), ``[tracking]``, ``[training]`` and
``[serving]`` (the real-time API's per-tier time budgets), ``[scoring]`` and ``[rollout]``
(the stages and guardrails of the ``staged`` promotion policy); a key
Keel does not know is an error that names it, so a typo never falls back to a default in
silence. The deployment is rebuilt when a variable it reads, the home or the file changes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.core import env
from keel.core.policies import (
    GateThresholds,
    PromotionGates,
    PromotionPolicy,
    RetrainPolicy,
    RolloutPolicy,
    ScoringPolicy,
    ServingPolicy,
    TriggerPolicy,
)
from keel.core.settings import KeelPaths, keel_home
from keel.core.spec import UseCase

# The project's use cases live in this package; its ``DEFAULT`` names the module a home
# without ``KEEL_USECASE`` or a ``usecase`` key in keel.toml runs.
USECASES_PACKAGE = "usecases"
CONFIG_FILE = "keel.toml"
DEFAULT_EXPERIMENT = "keel"


class ConfigError(ValueError):
    """The deployment's configuration names a key, a table or a value Keel cannot use."""


@dataclass(frozen=True)
class TrackingLocation:
    """Where models are tracked and registered: an MLflow tracking URI, the artifacts'
    folder and the experiment."""

    tracking_uri: str
    artifact_root: Path
    experiment: str

    @property
    def local_store(self) -> Path | None:
        """The SQLite file of a ``sqlite:///`` store, else None."""
        prefix = "sqlite:///"
        return Path(self.tracking_uri[len(prefix):]) if self.tracking_uri.startswith(prefix) else None

    def exists(self) -> bool:
        """False only when the store is a local SQLite file that was never created: no model
        was ever registered there, and opening it would create it."""
        store = self.local_store
        return store is None or store.exists()


@dataclass(frozen=True)
class ServingKeys:
    """The columns a served prediction is keyed by: one row per ``key``, for ``date_column``."""

    key: str
    date_column: str


@dataclass(frozen=True)
class Deployment:
    home: Path
    usecase_module: str
    usecase: UseCase  # its tables carry the deployment's gate thresholds
    promotion: PromotionPolicy
    retraining: RetrainPolicy
    tracking: TrackingLocation
    training_threads: int
    config_file: Path  # where keel.toml is read from (it may not exist)
    serving: ServingPolicy = ServingPolicy()
    scoring: ScoringPolicy = ScoringPolicy()
    rollout: RolloutPolicy = RolloutPolicy()

    @property
    def paths(self) -> KeelPaths:
        return KeelPaths(self.home)

    @property
    def trigger(self) -> TriggerPolicy:
        return self.retraining.trigger

    @property
    def gates(self) -> dict[str, GateThresholds]:
        return {table.name: table.gates for table in self.usecase.tables}

    @property
    def serving_keys(self) -> ServingKeys | None:
        model = self.usecase.model
        return None if model is None else ServingKeys(model.key, model.date_column)

    def to_dict(self) -> dict[str, Any]:
        """The effective values, as ``keel status --json`` shows them."""
        keys = self.serving_keys
        return {
            "usecase": self.usecase_module,
            "config_file": str(self.config_file) if self.config_file.exists() else None,
            "promotion": self.promotion.to_dict(),
            "retraining": self.retraining.to_dict(),
            "gates": {name: gates.to_dict() for name, gates in self.gates.items()},
            "tracking": {"uri": self.tracking.tracking_uri, "artifact_root": str(self.tracking.artifact_root),
                         "experiment": self.tracking.experiment},
            "training": {"threads": self.training_threads},
            "serving": self.serving.to_dict(),
            "scoring": self.scoring.to_dict(),
            "rollout": self.rollout.to_dict(),
            "serving_keys": None if keys is None else dataclasses.asdict(keys),
        }


# --------------------------------------------------------------------------------------------
# The keys each section takes, and their types (read from the policy types themselves)


def _fields(cls: type, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(cls) if f.name not in skip}


_RETRAIN_OWN = _fields(RetrainPolicy, skip=("trigger",))
SECTIONS: dict[str, dict[str, str]] = {
    "promotion": {"policy": "str", **_fields(PromotionGates)},
    "retraining": {**_fields(TriggerPolicy), **_RETRAIN_OWN},
    "gates": _fields(GateThresholds),
    "tracking": {"uri": "str", "artifact_root": "str", "experiment": "str"},
    "training": {"threads": "int"},
    "serving": _fields(ServingPolicy),
    "scoring": _fields(ScoringPolicy),
    "rollout": _fields(RolloutPolicy),
}
TOP_LEVEL = {"usecase": "str"}
SHARES = "tuple[float, ...]"  # [rollout] canary_steps
OVERRIDES = "null_rate_overrides"


def _checked(value: Any, kind: str, where: str) -> Any:
    if kind == "str":
        ok = isinstance(value, str)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind == SHARES:
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not ok:
            raise ConfigError(f"{where} must be a list of numbers, got {value!r}")
        value = tuple(float(v) for v in value)
    else:
        raise AssertionError(f"no check for {kind}")
    if not ok:
        raise ConfigError(f"{where} must be {'a number' if kind == 'float' else 'an integer' if kind == 'int' else 'a string'}, "
                          f"got {value!r}")
    return value


def _overrides(value: Any, where: str) -> dict[str, float | None]:
    """``column = tolerance`` or ``column = false`` (the column's null rate is not gated)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table of column = number (or false: not gated)")
    out: dict[str, float | None] = {}
    for column, tolerance in value.items():
        out[column] = None if tolerance is False or tolerance is None else _checked(tolerance, "float", f"{where}.{column}")
    return out


def _section(values: Any, section: str, source: str, tables: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: [{section}] must be a table")
    known = SECTIONS[section]
    out: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{source}: [{section}] {key}"
        if section == "gates" and key in tables:
            out[key] = _gate_table(value, key, source)
        elif section == "gates" and key == OVERRIDES:
            out[key] = _overrides(value, where)
        elif key in known and key != OVERRIDES:
            out[key] = _checked(value, known[key], where)
        else:
            extra = f"; the tables are {', '.join(tables)}" if section == "gates" else ""
            raise ConfigError(f"{source}: [{section}] has no key {key!r}; known keys: "
                              f"{', '.join(sorted(known))}{extra}")
    return out


def _gate_table(values: Any, table: str, source: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: [gates.{table}] must be a table")
    known = SECTIONS["gates"]
    out: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{source}: [gates.{table}] {key}"
        if key == OVERRIDES:
            out[key] = _overrides(value, where)
        elif key in known:
            out[key] = _checked(value, known[key], where)
        else:
            raise ConfigError(f"{source}: [gates.{table}] has no key {key!r}; known keys: {', '.join(sorted(known))}")
    return out


def validate(layer: Mapping[str, Any], source: str, tables: tuple[str, ...]) -> dict[str, Any]:
    """One layer (a use case's defaults, a parsed keel.toml, the environment's values),
    checked key by key: an unknown section or key is an error that names it."""
    out: dict[str, Any] = {}
    for name, value in layer.items():
        if name in TOP_LEVEL:
            out[name] = _checked(value, TOP_LEVEL[name], f"{source}: {name}")
        elif name in SECTIONS:
            out[name] = _section(value, name, source, tables)
        else:
            raise ConfigError(f"{source}: unknown section or key {name!r}; known: "
                              f"{', '.join([*TOP_LEVEL, *(f'[{s}]' for s in SECTIONS)])}")
    return out


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------------------------
# Building the deployment


def _config_path(home: Path) -> Path:
    named = env.get(env.KEEL_CONFIG)
    return Path(named).expanduser().resolve() if named else home / CONFIG_FILE


def read_file(path: Path) -> dict[str, Any]:
    """The parsed keel.toml; empty when there is none (unless ``KEEL_CONFIG`` named it)."""
    if not path.exists():
        if env.get(env.KEEL_CONFIG):
            raise ConfigError(f"KEEL_CONFIG names {path}, which does not exist")
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _environment_layer() -> dict[str, Any]:
    layer: dict[str, Any] = {}
    if usecase := env.get(env.KEEL_USECASE):
        layer["usecase"] = usecase
    if policy := env.get(env.KEEL_PROMOTION_POLICY):
        layer["promotion"] = {"policy": policy}
    if threads := env.get(env.KEEL_TRAIN_THREADS):
        try:
            layer["training"] = {"threads": int(threads)}
        except ValueError as exc:
            raise ConfigError(f"{env.KEEL_TRAIN_THREADS} must be an integer, got {threads!r}") from exc
    tracking = {key: value for key, value in (("uri", env.get(env.KEEL_MLFLOW_TRACKING_URI)),
                                              ("experiment", env.get(env.KEEL_MLFLOW_EXPERIMENT))) if value}
    if tracking:
        layer["tracking"] = tracking
    return layer


def _load_usecase(module: str) -> UseCase:
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"use case module {module!r} cannot be imported: {exc}") from exc
    usecase = getattr(loaded, "USECASE", None)
    if not isinstance(usecase, UseCase):
        raise ConfigError(f"use case module {module!r} has no USECASE (a keel.core.spec.UseCase)")
    return usecase


def _per_table(gates: Mapping[str, Any], tables: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """One layer's ``[gates]`` and ``[gates.<table>]`` as each table's values: the table's own
    over every table's, so that a later layer's ``[gates]`` still overrides an earlier
    layer's ``[gates.<table>]``."""
    everywhere = {k: v for k, v in gates.items() if k not in tables}
    out = {}
    for table in tables:
        own = gates.get(table, {})
        values = {**{k: v for k, v in everywhere.items() if k != OVERRIDES},
                  **{k: v for k, v in own.items() if k != OVERRIDES}}
        overrides = {**everywhere.get(OVERRIDES, {}), **own.get(OVERRIDES, {})}
        out[table] = {**values, **({OVERRIDES: overrides} if overrides else {})}
    return out


def _gates(base: GateThresholds, values: Mapping[str, Any]) -> GateThresholds:
    own = {k: v for k, v in values.items() if k != OVERRIDES}
    overrides = {**base.null_rate_overrides, **values.get(OVERRIDES, {})}
    return dataclasses.replace(base, **own, null_rate_overrides=overrides)


def default_usecase() -> str:
    """The module the project's use-case package names as its default."""
    package = importlib.import_module(USECASES_PACKAGE)
    default = getattr(package, "DEFAULT", None)
    if not isinstance(default, str):
        raise ConfigError(f"no use case chosen: set KEEL_USECASE, or DEFAULT in the {USECASES_PACKAGE} package")
    return default


def build(home: Path | None = None) -> Deployment:
    """A deployment from the layers as they are now (:func:`current` caches it)."""
    home = (home or keel_home()).resolve()
    path = _config_path(home)
    environment = _environment_layer()
    written = read_file(path)
    module = environment.get("usecase") or written.get("usecase") or default_usecase()
    if not isinstance(module, str):
        raise ConfigError(f"{path}: usecase must be a module path (a string), got {module!r}")
    usecase = _load_usecase(module)
    tables = tuple(table.name for table in usecase.tables)
    values: dict[str, Any] = {}
    for source, layer in ((f"{module} USECASE.deployment", usecase.deployment), (str(path), written),
                          ("the environment", environment)):
        checked = validate(layer, source, tables)
        if "gates" in checked:
            checked["gates"] = _per_table(checked["gates"], tables)
        values = _merge(values, checked)
    try:
        return _assemble(home, module, usecase, path, values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the deployment's configuration ({path} and the environment): {exc}") from exc


def _assemble(home: Path, module: str, usecase: UseCase, path: Path, values: Mapping[str, Any]) -> Deployment:
    promotion = dict(values.get("promotion", {}))
    retraining = dict(values.get("retraining", {}))
    trigger = {k: retraining.pop(k) for k in list(retraining) if k in _fields(TriggerPolicy)}
    gates = values.get("gates", {})
    tables = tuple(
        dataclasses.replace(table, gates=_gates(table.gates, gates.get(table.name, {}))) for table in usecase.tables
    )
    tracking = values.get("tracking", {})
    paths = KeelPaths(home)
    threads = values.get("training", {}).get("threads", 1)
    if threads < 1:
        raise ValueError(f"[training] threads must be >= 1, got {threads}")
    return Deployment(
        home=home,
        usecase_module=module,
        usecase=dataclasses.replace(usecase, tables=tables),
        promotion=PromotionPolicy(policy=promotion.pop("policy", "auto"), gates=PromotionGates(**promotion)),
        retraining=RetrainPolicy(trigger=TriggerPolicy(**trigger), **retraining),
        tracking=TrackingLocation(
            tracking.get("uri") or f"sqlite:///{paths.mlflow / 'mlflow.db'}",
            Path(tracking["artifact_root"]) if tracking.get("artifact_root") else paths.mlflow / "artifacts",
            tracking.get("experiment") or DEFAULT_EXPERIMENT,
        ),
        training_threads=threads,
        config_file=path,
        serving=ServingPolicy(**values.get("serving", {})),
        scoring=ScoringPolicy(**values.get("scoring", {})),
        rollout=RolloutPolicy(**values.get("rollout", {})),
    )


def at(home: Path) -> Deployment:
    """The deployment of ``home``: the process's own when it is that home, else built for it."""
    deployment = current()
    return deployment if deployment.home == home.resolve() else build(home)


def relocated(deployment: Deployment, home: Path) -> Deployment:
    """The same use case, policies and thresholds in another home, with that home's own
    keel.toml and default tracking location (a replay must not register into the source's)."""
    home = home.resolve()
    fresh = _assemble(home, deployment.usecase_module, deployment.usecase, home / CONFIG_FILE, {})
    return dataclasses.replace(deployment, home=home, tracking=fresh.tracking, config_file=fresh.config_file)


_cache: tuple[tuple, Deployment] | None = None


def _cache_key() -> tuple:
    home = keel_home()
    path = _config_path(home)
    try:
        stat = path.stat()
        written = (stat.st_mtime_ns, stat.st_size)
    except FileNotFoundError:
        written = None
    return env.deployment_values(), str(home), str(path), written


def current() -> Deployment:
    """The process's deployment, built once and rebuilt only when a variable it reads, the
    home or its keel.toml changed (tests that switch homes get each home's own)."""
    global _cache
    key = _cache_key()
    if _cache is None or _cache[0] != key:
        _cache = (key, build())
    return _cache[1]


# --------------------------------------------------------------------------------------------
# Writing keel.toml


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        text = str(value)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def toml_text(deployment: Deployment) -> str:
    """A keel.toml that gives ``deployment`` back when read in the same home: every policy
    and threshold spelled out (the tracking location only where it differs from the home's
    default, so that the file still holds when the home moves)."""
    default = _assemble(deployment.home, deployment.usecase_module, deployment.usecase,
                        deployment.config_file, {}).tracking
    lines = ["# Keel's deployment configuration (see the README's Configuration section).",
             f"usecase = {_toml_value(deployment.usecase_module)}", ""]

    def section(name: str, values: Mapping[str, Any]) -> None:
        lines.append(f"[{name}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")

    section("promotion", deployment.promotion.to_dict())
    section("retraining", deployment.retraining.to_dict())
    for table, gates in deployment.gates.items():
        values = gates.to_dict()
        overrides = values.pop(OVERRIDES)
        section(f"gates.{_toml_key(table)}", values)
        if overrides:
            section(f"gates.{_toml_key(table)}.{OVERRIDES}",
                    {column: False if tolerance is None else tolerance for column, tolerance in overrides.items()})
    tracking = {
        key: value for key, value, fallback in (
            ("uri", deployment.tracking.tracking_uri, default.tracking_uri),
            ("artifact_root", str(deployment.tracking.artifact_root), str(default.artifact_root)),
            ("experiment", deployment.tracking.experiment, default.experiment),
        ) if value != fallback
    }
    if tracking:
        section("tracking", tracking)
    section("training", {"threads": deployment.training_threads})
    section("serving", deployment.serving.to_dict())
    section("scoring", deployment.scoring.to_dict())
    section("rollout", deployment.rollout.to_dict())
    return "\n".join(lines)
