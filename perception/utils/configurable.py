"""Typed configuration machinery: dataclasses built from nested dicts with strict validation.

Every section of the toolkit's configuration is a plain ``@dataclass`` shaped like the constructor it feeds.
This module turns YAML-style dicts into those dataclasses, checking each key and value against the type hints,
so that a misspelt key or a wrong type fails early with a message that names the key, the value and what was
expected (and, for an unknown key, the closest valid one).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key that does not fit the schema."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) if a is not Ellipsis else '...' for a in get_args(tp))}]"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def unknown_key_message(key: str, valid: typing.Iterable[str], where: str) -> str:
    """The error text for a key that is not in ``valid``, with the closest valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown key {where}{key!r}.{hint} Valid keys: {', '.join(valid)}"


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` and convert it (lists to tuples, dicts to dataclasses)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r} ({type(value).__name__})")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: got {value!r}, expected one of {', '.join(repr(a) for a in get_args(tp))}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        # Try exact-type members first so that e.g. `bool | str` keeps a bool as a bool.
        for member in get_args(tp):
            try:
                return _convert(value, member, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items ({_type_name(tp)}), got {value!r}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {_convert(k, key_tp, f"{key} key"): _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected bool (true or false)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected int")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected float")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected str")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, validating every key and value.

    Args:
        cls: the dataclass type.
        data: a mapping of field names to values; missing fields take their defaults.
        prefix: dotted path of ``data`` inside the whole config, used in error messages.

    A section whose class defines ``with_preset(data, prefix)`` (a classmethod) gets ``data`` through it first:
    defaults that depend on other keys of the section (``model.scale``), merged under the keys given.

    Raises:
        ConfigError: for an unknown key (naming the closest valid ones) or a value of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    preset = getattr(cls, "with_preset", None)
    if callable(preset):
        data = preset(data, prefix)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(unknown_key_message(str(key), fields, prefix))
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}")
    for name in fields.keys() - kwargs.keys():
        # Nested sections left at their defaults are built the same way, so their checks run too.
        if dataclasses.is_dataclass(hints[name]) and fields[name].default_factory is hints[name]:
            kwargs[name] = from_dict(hints[name], {}, prefix=f"{prefix}{name}.")
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field without default
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass (recursively) as plain dicts, lists and scalars, ready for YAML or a checkpoint."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def deep_merge(base: dict, override: Mapping) -> dict:
    """``override`` merged into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out
