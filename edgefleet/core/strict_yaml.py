"""A strict YAML (and JSON) reader for documents that decide what a device runs.

Why not ``yaml.safe_load``: what a checker reads must be what the runtime reads, and YAML
lets the two differ. Go's YAML libraries apply merge keys (``<<``) that a checker may read
as a plain key; aliases make one node appear in two places; duplicate keys keep the last
value in one parser and the first in another; YAML 1.1 resolves ``yes``/``on``/``0o17``/
``1_000``/``12:30`` differently from YAML 1.2; explicit tags (``!!binary``, ``!!set``)
build types JSON does not have; and PyYAML's composer recurses, so 200,000 nested ``[``
end in a ``RecursionError``. This reader walks the parser's *events* (iteratively, with a
depth and node budget) and accepts only the unambiguous subset:

- one document; no anchors, aliases, explicit tags, merge keys (``<<``) or duplicate keys;
- mapping keys are strings;
- plain scalars resolve only to ``null``/``~``/empty, ``true``/``false``, decimal integers
  (no leading zeros, no ``_``, within int64), decimal floats, or strings that YAML 1.1
  and 1.2 both read as strings; anything else (``yes``, ``0x1F``, ``.inf``, dates) is an
  error naming the scalar and the fix (quote it);
- strings are valid Unicode (no lone surrogates from ``\\ud800`` escapes).

The result holds only dict, list, str, int, float, bool and None: exactly what JSON holds,
so :func:`canonical_json` of it is a faithful, unambiguous encoding of what was read.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from edgefleet.core.errors import InvalidInput, one_line

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_NODES = 20_000
_INT64 = 2**63 - 1

_NULL = re.compile(r"(?:null|~|)")
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+(?:[eE][-+]?[0-9]+)?")
_RESOLVER = yaml.resolver.Resolver()
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml events when available
# What a YAML 1.2 core-schema reader (go-yaml v3) takes for a non-string, beyond 1.1's view.
_YAML12_NOT_STR = re.compile(
    r"[-+]?(?:[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)"
    r"|[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
    r"|(?:null|Null|NULL|~|true|True|TRUE|false|False|FALSE)"
)


class StrictYAMLError(InvalidInput):
    """The document uses a YAML feature whose meaning differs between readers."""


def load(data: bytes | str, *, what: str = "document", max_bytes: int = MAX_BYTES) -> Any:
    """Read one strict YAML/JSON document (see the module doc); raise :class:`StrictYAMLError`."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise StrictYAMLError(f"{what} is {len(raw)} bytes, over {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictYAMLError(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        return _build(yaml.parse(text, Loader=_LOADER), what)
    except yaml.YAMLError as exc:
        raise StrictYAMLError(f"{what} is not valid YAML: {one_line(exc)}") from exc
    except RecursionError as exc:  # defensive: the walk below is iterative
        raise StrictYAMLError(f"{what} is nested too deeply") from exc


def canonical_json(obj: Any) -> bytes:
    """The canonical encoding of a strict document: sorted keys, no white space, UTF-8,
    one trailing newline. Kubelet and podman both read it (JSON is YAML)."""
    return (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        + b"\n"
    )


def _build(events: Any, what: str) -> Any:
    stack: list[Any] = []  # open containers: list, or [dict, pending key or _NO_KEY]
    result: Any = _NOTHING
    documents = 0
    nodes = 0
    for event in events:
        if isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent)):
            continue
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise StrictYAMLError(f"{what} holds more than one YAML document")
            continue
        if isinstance(event, yaml.DocumentEndEvent):
            continue
        if isinstance(event, yaml.AliasEvent):
            raise StrictYAMLError(f"{what}: aliases (*{event.anchor}) are not allowed")
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            done = stack.pop()
            value = done[0] if isinstance(done, _Map) else done
            if isinstance(done, _Map) and done.key is not _NO_KEY:
                raise StrictYAMLError(f"{what}: mapping ends after a key")  # pragma: no cover
            result = _attach(stack, value, result, what)
            continue
        nodes += 1
        if nodes > MAX_NODES:
            raise StrictYAMLError(f"{what} has more than {MAX_NODES} nodes")
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise StrictYAMLError(f"{what}: anchors (&{anchor}) are not allowed")
        tag = getattr(event, "tag", None)
        if tag is not None and not (isinstance(event, yaml.ScalarEvent) and tag == "!"):
            raise StrictYAMLError(f"{what}: explicit tags ({tag}) are not allowed")
        if isinstance(event, yaml.ScalarEvent):
            result = _attach(stack, _scalar(event, what), result, what, key_event=event)
            continue
        if len(stack) >= MAX_DEPTH:
            raise StrictYAMLError(f"{what} is nested deeper than {MAX_DEPTH} levels")
        stack.append([] if isinstance(event, yaml.SequenceStartEvent) else _Map())
    if result is _NOTHING:
        raise StrictYAMLError(f"{what} is empty")
    return result


class _Map(list):  # type: ignore[type-arg]
    """An open mapping: ``self[0]`` the dict; ``key`` the key awaiting its value."""

    def __init__(self) -> None:
        super().__init__([{}])
        self.key: Any = _NO_KEY


_NO_KEY = object()
_NOTHING = object()


def _attach(stack: list[Any], value: Any, result: Any, what: str, key_event: Any = None) -> Any:
    if not stack:
        return value
    top = stack[-1]
    if not isinstance(top, _Map):
        top.append(value)
        return result
    if top.key is _NO_KEY:
        if not isinstance(value, str) or key_event is None:
            raise StrictYAMLError(f"{what}: mapping keys must be strings, got {value!r:.40}")
        if value == "<<":
            raise StrictYAMLError(f"{what}: merge keys (<<) are not allowed")
        if value in top[0]:
            raise StrictYAMLError(f"{what}: duplicate key {value!r}")
        top.key = value
        return result
    top[0][top.key] = value
    top.key = _NO_KEY
    return result


def _scalar(event: Any, what: str) -> Any:
    value: str = event.value
    _check_unicode(value, what)
    if event.style or event.tag == "!":  # quoted or block: always a string (libyaml: "" = plain)
        return value
    tag = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))
    if tag == "tag:yaml.org,2002:merge":
        raise StrictYAMLError(f"{what}: merge keys (<<) are not allowed")
    if tag == "tag:yaml.org,2002:str" and not _YAML12_NOT_STR.fullmatch(value):
        return value
    if _NULL.fullmatch(value):
        return None
    if value in ("true", "false"):
        return value == "true"
    if _INT.fullmatch(value):
        number = int(value)
        if abs(number) > _INT64:
            raise StrictYAMLError(f"{what}: integer {value[:40]} is out of range")
        return number
    if _FLOAT.fullmatch(value):
        return float(value)
    raise StrictYAMLError(
        f"{what}: the plain scalar {value[:40]!r} reads differently in YAML 1.1 and 1.2 "
        "parsers: quote it, or write true/false, null, or a plain decimal number"
    )


def _check_unicode(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StrictYAMLError(f"{what}: a string holds a lone surrogate ({exc.reason})") from exc
