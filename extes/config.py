"""One way to read configuration files: YAML into pydantic v2 models, errors naming file, key path, reason.

Every configuration file of the project (arms, study protocols, training configs, evaluation
matrices) is a pydantic model with ``extra="forbid"``: a subclass of `ConfigModel`, or a class decorated
with `config_dataclass` where callers also need a real (frozen) dataclass (``dataclasses.replace``,
positional construction). This module reads the YAML and validates it; the models hold the checks, so a
check is written once.

Errors read ``<file>: <key path>: <reason>``, e.g. ``protocol.yaml: arms[1].generation: unknown key
'temprature'``. A model can raise ``ValueError`` (or `ConfigError`) from a validator with its own
wording; that wording is kept as it is, prefixed with the key path.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass as _pydantic_dataclass

__all__ = ["ConfigError", "ConfigModel", "Flag", "Text", "config_dataclass", "format_loc", "load_config", "null_is",
           "read_mapping", "read_yaml", "validate_config", "whole"]


class ConfigError(ValueError):
    """An invalid configuration file; the message names the file, the key path and the reason."""


class ConfigModel(BaseModel):
    """Base of every configuration model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


# The value types configuration files share: pydantic's own checks, strict (`true` is not 1, "3" is not 3),
# worded by `format_errors` below.
Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1)]  # a non-empty text
Flag = Annotated[bool, Field(strict=True)]  # true or false


def whole(lo: int, hi: int) -> Any:
    """A whole number from `lo` to `hi` (the type of a field: ``judges: whole(1, 50) = 3``)."""
    return Annotated[int, Field(strict=True, ge=lo, le=hi)]


def null_is(default: Any) -> BeforeValidator:
    """YAML's null (``key:`` with no value) read as `default`: the one shape rule a type cannot say."""
    return BeforeValidator(lambda value: default if value is None else value)


M = TypeVar("M")
T = TypeVar("T")


def config_dataclass(cls: type[T]) -> type[T]:
    """A frozen pydantic dataclass that forbids unknown keys: a configuration model that is also a real
    dataclass (hashable, ``dataclasses.replace``/``fields``/``asdict``, positional arguments).

    Its validators run on every construction; checks that need the file system (paths relative to the
    YAML file) should run only when a validation context is given, i.e. when read through this module.
    """
    return _pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)


@functools.cache
def _adapter(model: type) -> TypeAdapter:
    return TypeAdapter(model)


def format_loc(loc: tuple[Any, ...]) -> str:
    """``("arms", 1, "generation")`` -> ``arms[1].generation``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_EXPECTED = {"dict_type": "a mapping", "list_type": "a list", "tuple_type": "a list", "string_type": "a text",
             "bool_type": "true or false", "bool_parsing": "true or false", "int_type": "a whole number",
             "int_parsing": "a whole number", "int_from_float": "a whole number", "float_type": "a number",
             "float_parsing": "a number", "model_type": "a mapping", "dataclass_type": "a mapping"}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
           "less_than": ("<", "lt")}


def _fields_at(model: Any, loc: tuple[Any, ...]) -> tuple[str, ...]:
    """The field names of the (nested) model that ``loc`` points into; () when that is not a model."""
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "__pydantic_fields__", None) or {}
        if part not in fields:
            return ()
        model = _inner_model(fields[part].annotation)
    return tuple(getattr(model, "__pydantic_fields__", None) or ())


def _inner_model(annotation: Any) -> Any:
    """``X``, ``X | None``, ``tuple[X, ...]``, ``list[X]`` -> X where X is a pydantic model or dataclass."""
    if getattr(annotation, "__pydantic_fields__", None) is not None:
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        inner = _inner_model(arg)
        if inner is not None:
            return inner
    return None


def _reason(err: dict[str, Any], model: Any = None) -> str:
    """One problem in the project's wording (the one place pydantic's error types are worded)."""
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    got = err.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        if not err.get("loc"):
            return "unknown key"
        allowed = _fields_at(model, tuple(err["loc"][:-1])) if model is not None else ()
        return f"unknown key {err['loc'][-1]!r}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if kind in ("missing", "missing_argument"):
        return "is required"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))  # "'a', 'b' or 'c'", or "2 or 3" for numbers
        choices = re.findall(r"'([^']*)'", expected) or re.split(r", | or ", expected)
        return f"{got!r} is not one of {', '.join(choices)}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got!r}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return f"expected a non-empty text, got {got!r}"
    if kind == "too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {ctx.get('min_length')} items"
    if kind in _BOUNDS:
        sign, key = _BOUNDS[kind]
        bound = ctx.get(key)
        return f"must be {sign} {bound:g}, got {got!r}" if isinstance(bound, float) else \
            f"must be {sign} {bound}, got {got!r}"
    msg = str(err.get("msg", "invalid value"))
    # Messages of our own validators come as "Value error, <our text>": keep only our text.
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    if "input" in err:
        return f"{msg} (got {got!r})"
    return msg


def format_errors(exc: ValidationError, where: str, model: Any = None) -> str:
    """All problems of a validation, one per line, each ``<where>: <key path>: <reason>``; with ``model``
    an unknown key's message lists the keys allowed there."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err.get("loc", ()) if p != "__root__")
        path = format_loc(loc)
        reason = _reason(err, model)
        lines.append(f"{where}: {path}: {reason}" if path else f"{where}: {reason}")
    return "\n".join(lines)


def validate_config(data: Any, model: type[M], where: str, *, error: type[Exception] = ConfigError,
                    context: dict[str, Any] | None = None) -> M:
    """Validate ``data`` (already parsed) against ``model``; raise ``error`` naming ``where`` and the key."""
    if not isinstance(data, dict):
        raise error(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model.model_validate(data, context=context)
        return _adapter(model).validate_python(data, context=context)
    except ValidationError as exc:
        raise error(format_errors(exc, where, model)) from None


def read_yaml(path: str | Path, what: str = "configuration", *, error: type[Exception] = ConfigError) -> Any:
    """The parsed YAML of ``path``; a missing file is FileNotFoundError, bad YAML ``error``."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc})") from None


def load_config(path: str | Path, model: type[M], what: str = "configuration", *,
                error: type[Exception] = ConfigError, context: dict[str, Any] | None = None) -> M:
    """Read and validate a YAML configuration file in one step."""
    path = Path(path)
    ctx = {"base_dir": path.parent, **(context or {})}
    return validate_config(read_yaml(path, what, error=error), model, str(path), error=error, context=ctx)


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in a small JSON or YAML settings file (by suffix: prices, scenario quotas); errors name
    the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")
    if path.suffix in (".yaml", ".yml"):
        return read_yaml(path, what, error=ValueError)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
