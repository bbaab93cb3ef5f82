"""Typed settings read from a config section (ml_collections ConfigDict or dict)."""
from __future__ import annotations

import dataclasses
import json


def from_section(cls, section, name: str):
    """An instance of the frozen dataclass `cls` from `section`; unknown keys are an error naming
    them; list values become tuples (ml_collections keeps tuples as given)."""
    d = dict(section) if section is not None else {}
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {name} settings: {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def as_dict(config) -> dict:
    """A whole config as plain JSON values (what provenance records): a ConfigDict through its
    JSON form, a dict as it is."""
    return json.loads(config.to_json()) if hasattr(config, "to_json") else dict(config)


def dataclass_defaults(**sections) -> dict:
    """{name: the default values of the frozen dataclass, as JSON} for `differences`."""
    return {name: json.loads(json.dumps(dataclasses.asdict(cls()))) for name, cls in sections.items()}


def differences(old, new, skip=frozenset(), prefix: str = "", defaults=None) -> list:
    """'a.b: OLD then, NEW now' for every key path (sorted) where two JSON trees differ; key paths
    in `skip` are left out. A setting added since an old tree was saved must not read as a change:
    a key missing from a tree reads as its value in `defaults` (a tree of the same shape, see
    `dataclass_defaults()`), else as None, and None as an empty list or string."""
    if isinstance(old, dict) and isinstance(new, dict):
        d = defaults if isinstance(defaults, dict) else {}
        return [x for k in sorted(set(old) | set(new)) if f"{prefix}{k}" not in skip
                for x in differences(old.get(k, d.get(k)), new.get(k, d.get(k)), skip, f"{prefix}{k}.", d.get(k))]
    empty = lambda v: v is None or (isinstance(v, (list, tuple, str)) and not v)
    same = old == new or (empty(old) and empty(new))
    return [] if same else [f"{prefix.rstrip('.')}: {old!r} then, {new!r} now"]
