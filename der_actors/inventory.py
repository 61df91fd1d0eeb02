"""assets.yaml -> frozen Site/Asset, validated before anything starts (DESIGN.md section 4).

A bad file must stop start-up with every problem named at once, each by field path and reason,
so an operator fixes the file in one pass. Validation is hand-written (a table of field checks
plus a few cross-field rules) because the messages are the product here; cattrs only builds the
frozen types once the data is known to be clean.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
import yaml

from der_actors.model import Asset, AssetType, Inventory, Site

__all__ = ["FieldError", "InventoryError", "load_inventory", "parse_inventory"]


@attrs.frozen
class FieldError:
    path: str  # e.g. "assets[3].max_mw"; "" for the document itself, the file name for I/O
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class InventoryError(ValueError):
    """The inventory is unusable; `errors` holds every problem found (sites before assets)."""

    def __init__(self, errors: tuple[FieldError, ...] | list[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class _Invalid(Exception):
    """Raised by a field check; its message is the reason."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        got = repr(value) if isinstance(value, str) else _kind(value)
        raise _Invalid(f"must be a non-empty string, got {got}")
    return value


def _uuid(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a UUID string, got {_kind(value)}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _Invalid(f"must be a UUID, got {value!r}") from None


def _asset_type(value: object) -> str:
    allowed = [t.value for t in AssetType]
    if value not in allowed:
        raise _Invalid(f"must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def _number(
    *, above: float | None = None, at_least: float | None = None, at_most: float | None = None
) -> Callable[[object], float]:
    """A check for a finite number within bounds; ints become floats, bools are refused."""

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            got = f"str {value!r}" if isinstance(value, str) else _kind(value)
            raise _Invalid(f"must be a number, got {got}")
        number = float(value)
        if not math.isfinite(number):
            raise _Invalid(f"must be finite, got {number}")
        if above is not None and not number > above:
            raise _Invalid(f"must be > {above:g}, got {number}")
        if at_least is not None and number < at_least:
            raise _Invalid(f"must be >= {at_least:g}, got {number}")
        if at_most is not None and number > at_most:
            raise _Invalid(f"must be <= {at_most:g}, got {number}")
        return number

    return check


def _finite(value: object) -> float | None:
    """A finite number as float, else None (its own field check reports why)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@attrs.frozen
class _Field:
    check: Callable[[object], Any]
    required: bool = True  # optional fields may be absent or null; the model's default applies


_SITE_FIELDS: dict[str, _Field] = {
    "id": _Field(_uuid),
    "name": _Field(_text),
    "location": _Field(_text, required=False),
}

_ASSET_FIELDS: dict[str, _Field] = {
    "id": _Field(_uuid),
    "name": _Field(_text),
    "site_id": _Field(_uuid),
    "type": _Field(_asset_type, required=False),
    "location": _Field(_text, required=False),
    "capacity_mwhr": _Field(_number(above=0), required=False),  # required for bess: see below
    "max_mw": _Field(_number(at_least=0)),
    "min_mw": _Field(_number(at_most=0)),
    "ramp_rate_mw_per_min": _Field(_number(above=0), required=False),
    "efficiency": _Field(_number(above=0, at_most=1), required=False),
}

_TOP_LEVEL = ("sites", "assets")

_converter = cattrs.Converter(forbid_extra_keys=True)


def _check_entry(
    entry: object, path: str, fields: dict[str, _Field], errors: list[FieldError]
) -> dict[str, Any]:
    """Check one mapping against its field table; return the clean values that passed."""
    if not isinstance(entry, Mapping):
        errors.append(FieldError(path, f"must be a mapping, got {_kind(entry)}"))
        return {}
    for key in entry:
        if key not in fields:
            errors.append(FieldError(f"{path}.{key}", "unknown field"))
    clean: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in entry or (entry[name] is None and not field.required):
            if field.required:
                errors.append(FieldError(f"{path}.{name}", "required"))
            continue
        try:
            clean[name] = field.check(entry[name])
        except _Invalid as e:
            errors.append(FieldError(f"{path}.{name}", str(e)))
    return clean


def _list(data: Mapping[Any, Any], key: str, errors: list[FieldError]) -> list[object]:
    if key not in data:
        errors.append(FieldError(key, "required"))
        return []
    value = data[key]
    if not isinstance(value, list):
        errors.append(FieldError(key, f"must be a list, got {_kind(value)}"))
        return []
    return value


def parse_inventory(data: object) -> Inventory:
    """Validate an already-parsed YAML document; raise InventoryError listing every problem."""
    if not isinstance(data, Mapping):
        reason = f"must be a mapping with keys sites and assets, got {_kind(data)}"
        raise InventoryError([FieldError("", reason)])
    errors: list[FieldError] = [FieldError(str(k), "unknown field") for k in data if k not in _TOP_LEVEL]

    sites: list[dict[str, Any]] = []
    site_index: dict[str, int] = {}
    for i, entry in enumerate(_list(data, "sites", errors)):
        path = f"sites[{i}]"
        clean = _check_entry(entry, path, _SITE_FIELDS, errors)
        sites.append(clean)
        if "id" in clean:
            if clean["id"] in site_index:
                errors.append(FieldError(f"{path}.id", f"duplicate of sites[{site_index[clean['id']]}].id"))
            else:
                site_index[clean["id"]] = i

    assets: list[dict[str, Any]] = []
    asset_index: dict[str, int] = {}
    for i, entry in enumerate(_list(data, "assets", errors)):
        path = f"assets[{i}]"
        clean = _check_entry(entry, path, _ASSET_FIELDS, errors)
        assets.append(clean)
        if not isinstance(entry, Mapping):
            continue
        if "id" in clean:
            if clean["id"] in asset_index:
                errors.append(FieldError(f"{path}.id", f"duplicate of assets[{asset_index[clean['id']]}].id"))
            else:
                asset_index[clean["id"]] = i
        if "site_id" in clean and clean["site_id"] not in site_index:
            errors.append(FieldError(f"{path}.site_id", f"no site with id {clean['site_id']}"))
        # An invalid type is already reported; don't guess which type's rules apply.
        kind = clean.get("type") if entry.get("type") is not None else AssetType.BESS.value
        if kind == AssetType.BESS.value and entry.get("capacity_mwhr") is None:
            errors.append(FieldError(f"{path}.capacity_mwhr", "required for type bess"))
        low, high = _finite(entry.get("min_mw")), _finite(entry.get("max_mw"))
        if low is not None and high is not None and low > high:
            errors.append(FieldError(f"{path}.max_mw", f"must be >= min_mw ({low})"))

    if errors:
        raise InventoryError(errors)
    return Inventory(
        sites=tuple(_converter.structure(s, Site) for s in sites),
        assets=tuple(_converter.structure(a, Asset) for a in assets),
    )


# libyaml's loader when PyYAML was built with it (the wheels are): the pure-Python one takes ~9 s
# for 10,000 assets, which is most of a headend's start-up. Same safe subset of YAML either way.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read and validate an assets.yaml; I/O and YAML syntax problems become InventoryError too."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:  # bytes: YAML detects the encoding and reports bad bytes
            data = yaml.load(f, Loader=_SafeLoader)
    except OSError as e:
        raise InventoryError([FieldError(name, f"cannot read: {e.strerror or e}")]) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise InventoryError([FieldError(name, f"invalid YAML{where}: {problem}")]) from e
    return parse_inventory(data)
