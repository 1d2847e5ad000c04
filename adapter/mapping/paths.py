"""JMESPath's common subset compiled to Python closures. Pure.

`jmespath` walks its syntax tree for every search through a generic visitor (a fresh
interpreter object per call, a method lookup per node): that was most of the cost of
mapping a message. Mapping paths use a small part of the language (`ENERGY.Power[0] ||
ENERGY.Power`, `"DS18B20-1".Temperature`, `params."switch:0".apower`), which compiles
here into closures giving jmespath's answer for every JSON document (what
`decode_payload` returns: dict, list, str, int, float, bool, None, and bytes for raw
payloads). `compile_search` returns None for anything outside the subset (projections,
filters, functions, comparisons ...), and the caller keeps jmespath for those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from numbers import Number
from typing import Any

Search = Callable[[Any], Any]

# JMESPath's false values (TreeInterpreter._is_false): None, False, "", [] and {}. 0 is true.
_EMPTY_FALSE = (str, list, dict)


def is_false(value: Any) -> bool:
    """JMESPath falsiness, for `||`, `&&` (jmespath compares with == '', [], {})."""
    return value is None or value is False or (isinstance(value, _EMPTY_FALSE) and not value)


class Unsupported(Exception):
    """A node outside the compiled subset: the whole expression stays with jmespath."""


def compile_search(parsed: Mapping[str, Any]) -> Search | None:
    """A function equal to `jmespath.compile(text).search` for the tree `parsed` (the
    `.parsed` of a compiled expression), or None when the tree uses more than the subset."""
    try:
        return _compile(parsed)
    except (Unsupported, KeyError, IndexError, TypeError):
        # Unsupported, or a tree of a shape this code does not know (the syntax tree is
        # jmespath's own business and may change): jmespath itself searches then.
        return None


def _compile(node: Mapping[str, Any]) -> Search:
    kind = node.get("type")
    if kind in ("field", "index", "subexpression", "index_expression", "pipe"):
        steps = _steps(node)
        if steps is not None:
            return _walk(steps)
        # Sequential nodes apply their children one after another to the previous result.
        return _sequence(tuple(_compile(child) for child in node["children"]))
    if kind in ("identity", "current"):
        return _identity
    if kind == "literal":
        return _constant(node["value"])
    if kind == "or_expression":
        alternatives = _alternatives(node)
        chains = [_steps(alternative) for alternative in alternatives]
        if all(chain is not None for chain in chains):
            return _first_chain([chain for chain in chains if chain is not None])
        return _either(tuple(_compile(alternative) for alternative in alternatives))
    if kind == "and_expression":
        return _both(_compile(node["children"][0]), _compile(node["children"][1]))
    if kind == "not_expression":
        return _negation(_compile(node["children"][0]))
    raise Unsupported(kind)


def _steps(node: Mapping[str, Any]) -> tuple[str | int, ...] | None:
    """A chain of field names and list indexes (`a."b-c"[0][-1].d`), or None.

    subexpression, index_expression and pipe all apply their children in order, so nested
    chains flatten into one."""
    kind = node.get("type")
    if kind == "field":
        name = node["value"]
        return (name,) if isinstance(name, str) else None
    if kind == "index":
        index = node["value"]
        return (index,) if type(index) is int else None
    if kind in ("subexpression", "index_expression", "pipe"):
        steps: list[str | int] = []
        for child in node["children"]:
            more = _steps(child)
            if more is None:
                return None
            steps.extend(more)
        return tuple(steps)
    return None


def _alternatives(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """`a || b || c` in order, whichever way it nests: the answer is the first true one,
    else the last one's value (or(or(a, b), c) and or(a, or(b, c)) agree on this)."""
    if node.get("type") != "or_expression":
        return [node]
    left, right = node["children"]
    return [*_alternatives(left), *_alternatives(right)]


def _identity(document: Any) -> Any:
    return document


def _constant(value: Any) -> Search:
    # jmespath hands out the literal's one object on every search too.
    def constant(document: Any) -> Any:
        return value

    return constant


def _walk(steps: tuple[str | int, ...]) -> Search:
    # A field of anything but an object and an index of anything but an array give None,
    # and None stays None through fields and indexes: the walk can stop at the first miss.
    if all(isinstance(step, str) for step in steps):
        if len(steps) == 1:
            (name,) = steps

            def field(document: Any) -> Any:
                return document.get(name) if isinstance(document, dict) else None

            return field

        def fields(document: Any) -> Any:
            for name in steps:
                if not isinstance(document, dict):
                    return None
                document = document.get(name)
            return document

        return fields

    def chain(document: Any) -> Any:
        for step in steps:
            if isinstance(step, str):
                if not isinstance(document, dict):
                    return None
                document = document.get(step)
            else:
                if not isinstance(document, list):
                    return None
                try:
                    document = document[step]
                except IndexError:
                    return None
        return document

    return chain


def _sequence(parts: tuple[Search, ...]) -> Search:
    def sequence(document: Any) -> Any:
        for part in parts:
            document = part(document)
        return document

    return sequence


def _either(alternatives: tuple[Search, ...]) -> Search:
    *first, last = alternatives

    def either(document: Any) -> Any:
        for alternative in first:
            value = alternative(document)
            if not (
                value is None or value is False or (isinstance(value, _EMPTY_FALSE) and not value)
            ):
                return value
        return last(document)

    return either


def _item_or_whole(fields: tuple[str, ...], index: int) -> Search:
    """`a.b[0] || a.b`: the first phase of a multi-phase meter, or the single value (the
    Tasmota idiom, five paths of every energy message): _first_chain for that shape."""

    def item_or_whole(document: Any) -> Any:
        for name in fields:
            if not isinstance(document, dict):
                return None
            document = document.get(name)
        if isinstance(document, list):
            try:
                value = document[index]
            except IndexError:
                value = None
            if not (
                value is None or value is False or (isinstance(value, _EMPTY_FALSE) and not value)
            ):
                return value
        return document

    return item_or_whole


def _first_chain(chains: list[tuple[str | int, ...]]) -> Search:
    """`a || b || ...` of field/index chains, the common form in mappings
    (`ENERGY.Power[0] || ENERGY.Power`, `DS18B20.Temperature || AM2301.Temperature`), in
    one function without a call per alternative. The chains' common beginning is walked
    once: a walk is a pure function of the document, so its answer is the same each time.
    """
    shared = 0
    while all(len(chain) > shared for chain in chains) and (
        len({chain[shared] for chain in chains}) == 1
    ):
        shared += 1
    prefix = chains[0][:shared]
    *first, last = [chain[shared:] for chain in chains]
    if (
        not last
        and len(first) == 1
        and len(first[0]) == 1
        and isinstance(first[0][0], int)
        and all(isinstance(step, str) for step in prefix)
    ):
        return _item_or_whole(tuple(str(step) for step in prefix), first[0][0])

    # The walks below are _walk's chain written out, for speed: a field of a non-object or
    # an index of a non-array is None, and None stays None to the end of a chain.
    def first_chain(document: Any) -> Any:
        for step in prefix:
            if isinstance(step, str):
                if not isinstance(document, dict):
                    return None
                document = document.get(step)
            elif not isinstance(document, list):
                return None
            else:
                try:
                    document = document[step]
                except IndexError:
                    return None
        if document is None:  # every alternative walks on from None: all are None
            return None
        for steps in first:
            value = document
            for step in steps:
                if isinstance(step, str):
                    if not isinstance(value, dict):
                        value = None
                        break
                    value = value.get(step)
                elif not isinstance(value, list):
                    value = None
                    break
                else:
                    try:
                        value = value[step]
                    except IndexError:
                        value = None
                        break
            if not (
                value is None or value is False or (isinstance(value, _EMPTY_FALSE) and not value)
            ):
                return value
        value = document
        for step in last:
            if isinstance(step, str):
                if not isinstance(value, dict):
                    return None
                value = value.get(step)
            elif not isinstance(value, list):
                return None
            else:
                try:
                    value = value[step]
                except IndexError:
                    return None
        return value

    return first_chain


def _both(left: Search, right: Search) -> Search:
    def both(document: Any) -> Any:
        value = left(document)
        if is_false(value):
            return value
        return right(document)

    return both


def _negation(operand: Search) -> Search:
    def negation(document: Any) -> Any:
        value = operand(document)
        # jmespath: !0 is false (0 is a true value), otherwise Python's `not`.
        number = isinstance(value, Number) and not isinstance(value, bool)
        if number and value == 0:
            return False
        return not value

    return negation
