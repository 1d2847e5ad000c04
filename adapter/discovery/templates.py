"""Home Assistant value templates as JMESPath paths, the language of mapping documents'
readings; and the paths discovery builds itself (keys, on/off comparisons)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_TEMPLATE = re.compile(r"\{\{-?\s*(?P<expr>.*?)\s*-?\}\}", re.S)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ACCESS = re.compile(
    r"\s*(?:\.\s*(?P<attr>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\[\s*(?:'(?P<sq>[^'\\]*)'|\"(?P<dq>[^\"\\]*)\"|(?P<index>-?\d+))\s*\])"
)
# Filters that do not change a number: `float` (with or without a default), `round`
# (the full precision is forwarded) and `is_defined`. `int` truncates, so it is refused.
_FILTER = re.compile(
    r"\s*\|\s*(?:float(?:\(\s*-?\d+(?:\.\d+)?\s*\))?|round(?:\(\s*\d+\s*\))?|is_defined)"
)


@dataclass(frozen=True)
class ValueTemplate:
    """A value template understood: the path into the payload (JMESPath text, `@` for the
    whole payload), and whether the payload must be decoded as JSON first (`value_json`)
    or taken as text (`value`)."""

    path: str
    json: bool
    keys: tuple[str | int, ...]  # the subscripts after value_json, for reading names


RAW = ValueTemplate("@", False, ())  # no template: the payload as text


def parse_template(text: Any) -> ValueTemplate | None:
    """`{{ value }}`, `{{ value_json }}`, `{{ value_json.a.b }}`, `{{ value_json['a'] }}`,
    `{{ value_json["PM2.5"] }}`, `{{ value_json.a[0] }}`, with the whitespace-control
    markers `{{-`/`-}}` and the filters `| float`, `| float(0)`, `| round`, `| round(1)`,
    `| is_defined`. Anything else (other filters, arithmetic, conditions, text around the
    braces, escapes in quoted keys) is None: not understood, never guessed."""
    if not isinstance(text, str) or len(text) > 1000:
        return None
    outer = _TEMPLATE.fullmatch(text.strip())
    if outer is None:
        return None
    expr = outer.group("expr")
    keys: list[str | int] = []
    if expr.startswith("value_json"):
        position, is_json = len("value_json"), True
        while True:
            access = _ACCESS.match(expr, position)
            if access is None:
                break
            if access.group("attr") is not None:
                keys.append(access.group("attr"))
            elif access.group("index") is not None:
                keys.append(int(access.group("index")))
            else:
                keys.append(
                    access.group("sq") if access.group("sq") is not None else access.group("dq")
                )
            position = access.end()
    elif expr.startswith("value"):
        position, is_json = len("value"), False
    else:
        return None
    while position < len(expr):
        found = _FILTER.match(expr, position)
        if found is None or found.end() == position:
            return None
        position = found.end()
    return ValueTemplate(key_path(keys), is_json, tuple(keys))


def parse_value_template(text: Any) -> str | None:
    """The path a value template reads (`@` for `{{ value }}`), or None when the template
    is not one of the forms `parse_template` understands."""
    parsed = parse_template(text)
    return None if parsed is None else parsed.path


def key_path(keys: Sequence[str | int]) -> str:
    """The JMESPath of keys and indexes (`@` for none); keys that are no identifiers are
    quoted (`"PM2.5"`, `"DS18B20-1"`)."""
    parts: list[str] = []
    for key in keys:
        if isinstance(key, int):
            parts.append(f"[{key}]")
            continue
        name = key if _IDENT.fullmatch(key) else json.dumps(key)
        parts.append(name if not parts else f".{name}")
    return "".join(parts) or "@"


def _literal(value: Any) -> str:
    """A JMESPath literal of a JSON value (backticks escaped)."""
    return "`" + json.dumps(value).replace("`", "\\`") + "`"


def on_off_path(base: str, on: Any, off: Any) -> str:
    """1 where the value at `base` equals `on`, 0 where it equals `off`, nothing
    otherwise. Text payloads compare as text (a number 1 equals "1"), as Home Assistant
    compares the rendered template with payload_on/payload_off."""

    def test(value: Any) -> str:
        if isinstance(value, str):
            return f"to_string({base}) == {_literal(value)}"
        return f"{base} == {_literal(value)}"

    return f"({test(on)} && `1`) || ({test(off)} && `0`) || `null`"
