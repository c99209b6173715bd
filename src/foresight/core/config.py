"""Frozen dataclass configs: presets per scale, validation, and ``key=value`` overrides.

Every experiment owns one config class. It is a frozen dataclass whose defaults are the paper's,
with a ``preset(scale)`` classmethod giving the ``tiny`` / ``quick`` / ``full`` variants and an
optional ``validate()`` that raises ``ValueError`` naming the bad value::

    @dataclass(frozen=True)
    class MyConfig(Config):
        lr: float = 1e-3          # the paper's learning rate
        epochs: int = 100

        @classmethod
        def preset(cls, scale: str) -> "MyConfig":
            return {"tiny": cls(epochs=2), "quick": cls(epochs=20), "full": cls()}[check_scale(scale)]

        def validate(self) -> None:
            if self.lr <= 0:
                raise ValueError(f"lr must be > 0, got {self.lr}")

``with_overrides(cfg, ["lr=3e-4", "epochs=5"])`` parses each value by the field's type and returns
a new, re-validated config; unknown keys and unparsable values are errors that name the key and
what is accepted.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

SCALES = ("tiny", "quick", "full")

C = TypeVar("C", bound="Config")


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    return scale


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class for frozen experiment/model configs (subclasses are frozen dataclasses too)."""

    # Subclasses list fields whose values must come from a fixed set, e.g. {"backbone": ("gcn", "sage")}.
    choices: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def __post_init__(self) -> None:
        for name, allowed in self.choices.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"{name}={value!r} is not allowed; expected one of {list(allowed)}")
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad value. Override in subclasses."""

    @classmethod
    def preset(cls: type[C], scale: str) -> C:
        check_scale(scale)
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: Any, *, where: str = "config") -> C:
        """Rebuild a config from its :meth:`to_dict` (e.g. a run's ``config.json``), checking it as strictly
        as ``--set``: ``data`` must be an object with exactly this class's keys, each of its field's type
        (ints are not bools, a float field takes an int), then :meth:`validate` runs. Missing keys are errors,
        never silently filled with class defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be a JSON object of {cls.__name__} fields, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown} for {cls.__name__}; accepted: {sorted(known)}")
        missing = sorted(set(known) - set(data))
        if missing:
            raise ValueError(f"{where}: missing keys {missing} for {cls.__name__}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: check_json_value(f"{where}: {k}", v, hints[k]) for k, v in data.items()})


def check_json_value(key: str, value: Any, tp: Any) -> Any:
    """``value`` (parsed JSON) as type ``tp``, or a ValueError naming ``key``, the value and the type.

    JSON has no tuples: a list is accepted for a tuple field and turned back into a tuple, so a reloaded
    config equals the original.
    """
    origin = typing.get_origin(tp)
    bad = ValueError(f"{key}={value!r} is not a valid {_type_name(tp)}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return check_json_value(key, value, a)
            except ValueError:
                pass
        raise bad
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_json_value(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise bad
        return tuple(
            check_json_value(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args or (Any,) * len(value)))
        )
    if origin in (dict, list) or tp in (dict, list):
        if not isinstance(value, origin or tp):
            raise bad
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise bad
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse_value(key: str, text: str, tp: Any) -> Any:
    """Parse the CLI string ``text`` as a value of type ``tp`` (int, float, bool, str, tuples, Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null") and len(args) < len(typing.get_args(tp)):
            return None
        errors = []
        for a in args:
            try:
                return parse_value(key, text, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"cannot parse {key}={text!r} as {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        inner = args[0] if args else str
        items = [t.strip() for t in text.strip("()[]").split(",") if t.strip()]
        return tuple(parse_value(key, t, inner) for t in items)
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"cannot parse {key}={text!r} as bool; expected true/false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)  # accept 1e4
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
            raise ValueError(f"cannot parse {key}={text!r} as int") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"cannot parse {key}={text!r} as float") from None
    if tp is str:
        return text
    raise ValueError(f"{key} has type {_type_name(tp)}, which cannot be set from the command line")


def with_overrides(config: C, overrides: Iterable[str]) -> C:
    """Return ``config`` with each ``key=value`` applied (parsed by the field's type) and re-validated."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key in changes:
            raise ValueError(f"--set {key} is given twice; give each key once")
        if key not in fields:
            raise ValueError(
                f"unknown config key {key!r} for {type(config).__name__}; accepted keys: {', '.join(sorted(fields))}"
            )
        changes[key] = parse_value(key, text.strip(), hints[key])
    return dataclasses.replace(config, **changes)
