"""Reading the operator's configuration files (the catalog, the gateway's upstreams and client keys files): one
place for YAML's quirks, duplicate keys, parse errors that never quote the file, and field-named messages.

Parser errors give positions only: quoting a line could print a key pasted into the file. Validation messages
quote numbers back, never strings (a string may be a URL with a password in it).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from router.numbers import number_message, whole_number


def yaml_number(value: Any) -> Any:
    """PyYAML reads ``1e-1`` (an exponent without a dot) as text: take it as the number it is, and ``512.0`` as a
    whole number; the strict number types (router.numbers) refuse everything else that is not a finite number."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    return whole_number(value)


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as ``upstreams.demo-nano.timeout_s: Input should be greater than 0 (got -1)``."""
    where = ".".join(str(x) for x in error["loc"])
    kind, got = error.get("type"), error.get("input")
    msg = str(error.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "extra_forbidden":
        msg = "unknown field (check the spelling)"
    elif kind == "missing":
        msg = "field required"
    elif kind == "string_type" and isinstance(got, int | float):
        msg += " (quote it in YAML: it was read as a number)"
    msg = number_message(error) or msg
    shown = f" (got {got!r})" if isinstance(got, bool | int | float) and kind != "string_type" else ""
    return f"{where}: {msg}{shown}" if where else msg


M = TypeVar("M", bound=BaseModel)


def validate_config(model: type[M], data: object, source: str, error: type[ValueError]) -> M:
    """``data`` as ``model``; ``error`` naming ``source`` and every field at fault (:func:`describe_error`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(describe_error(e) for e in exc.errors())
        raise error(f"{source}: {problems}") from None


def read_config_file(path: str | os.PathLike[str], error: type[ValueError], *, what: str, empty: str) -> Any:
    """The parsed content of a YAML file (JSON when the name ends in ``.json``), refusing keys given twice in one
    mapping (YAML and JSON parsers silently keep the last). Raises ``error`` naming the file: missing, unreadable,
    not parseable (with the position), or empty (``empty`` says what it needs)."""
    p, source = Path(path), str(path)
    if not p.is_file():
        raise error(f"{what} not found: {source}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{source}: cannot read: {exc}") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_unique_json_object)
        except json.JSONDecodeError as exc:
            raise error(f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        except _DuplicateKey as exc:
            raise error(f"{source}: not valid JSON: {exc}") from None
    else:
        try:
            data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            parts = [
                f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem
                for problem, mark in ((exc.problem, exc.problem_mark), (exc.context, exc.context_mark))
                if problem
            ]
            raise error(f"{source}: not valid YAML: {'; '.join(parts) or 'syntax error'}") from None
        except yaml.YAMLError as exc:
            raise error(f"{source}: not valid YAML: {type(exc).__name__}") from None
    if data is None:
        raise error(f"{source}: {empty}")
    return data


class _DuplicateKey(ValueError):
    pass


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(f"duplicate key {k!r}")
        out[k] = v
    return out


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently, which would drop
    an entry defined twice)."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
