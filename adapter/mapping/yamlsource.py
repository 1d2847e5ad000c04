"""YAML with positions: every mapping node knows its `file:line:column`, so errors in
mapping files point at the key that is wrong."""

from __future__ import annotations

from typing import Any

import yaml


class MappingError(ValueError):
    """A mapping file is wrong; the message starts with `file:line:column:`."""


class Node(dict[str, Any]):
    """A YAML mapping that remembers where it and each of its keys stand."""

    where: str = "?"
    key_where: dict[str, str]


# libyaml's parser when PyYAML has it (10,000 rules: seconds faster); same marks, same
# constructors.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_SCALAR_TAG = yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG
_SEQUENCE_TAG = yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
_MAPPING_TAG = yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG
# SafeLoader's implicit resolvers by first character.
_IMPLICIT: dict[str, tuple[tuple[str, Any], ...]] = {
    first: tuple(pairs)
    for first, pairs in yaml.SafeLoader.yaml_implicit_resolvers.items()
    if first is not None
}


def _resolve(self: Any, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
    """BaseResolver.resolve without what SafeLoader does not have (wildcard and path
    resolvers). libyaml calls it once per node: 10,000 rules are 230,000 calls, a tenth of
    the parse."""
    if kind is yaml.ScalarNode:
        if implicit[0]:
            for tag, regexp in _IMPLICIT.get(value[:1], ()):  # "" for the empty value
                if regexp.match(value):
                    return tag
        return _SCALAR_TAG
    return _MAPPING_TAG if kind is yaml.MappingNode else _SEQUENCE_TAG


class _Loader(_Base):  # type: ignore[valid-type,misc]
    filename = "?"

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # a value PyYAML cannot build: 2001-02-30
            if isinstance(exc, MappingError):
                raise
            raise MappingError(
                f"{_pos(self.filename, node.start_mark)}: invalid YAML value: {exc}"
            ) from None


def _pos(filename: str, mark: Any) -> str:
    return f"{filename}:{mark.line + 1}:{mark.column + 1}"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Node:
    result = Node()
    result.where = _pos(loader.filename, node.start_mark)
    result.key_where = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        at = _pos(loader.filename, key_node.start_mark)
        if not isinstance(key, str):
            raise MappingError(f"{at}: keys must be text, got {key!r}")
        if key in result:
            raise MappingError(f"{at}: duplicate key {key!r}")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_where[key] = at
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# Only while SafeLoader has no resolvers that `_resolve` leaves out (a future PyYAML might).
# The event reader resolves the same way, so it needs the same condition.
_PLAIN_RESOLVERS = (
    None not in yaml.SafeLoader.yaml_implicit_resolvers and not yaml.SafeLoader.yaml_path_resolvers
)
if _PLAIN_RESOLVERS:
    _Loader.resolve = _resolve
_EVENTS = _PLAIN_RESOLVERS


class _Fallback(Exception):
    """Something the event reader leaves to PyYAML's composer (an alias, a tagged
    collection)."""


def _scalar(loader: _Loader, event: Any) -> Any:
    """A scalar event's value: text as it is, anything else (numbers, booleans, null,
    dates, explicit tags) through PyYAML's constructors, errors included."""
    tag = event.tag
    value = event.value
    if tag is None or tag == "!":
        if not event.implicit[0]:  # quoted, or '!': text
            return value
        for resolved, regexp in _IMPLICIT.get(value[:1], ()):  # "" for the empty value
            if regexp.match(value):
                tag = resolved
                break
        else:
            return value
    elif tag == _SCALAR_TAG:
        return value
    node = yaml.ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
    return loader.construct_object(node, deep=True)


def _read(loader: _Loader, event: Any) -> Any:
    """The value that starts with `event`, read from the parser's events: what PyYAML's
    composer and constructors make of it, without the nodes in between (10,000 rules: the
    parse in less than half the time). Text and the plain collections are built here; every
    other scalar (numbers, booleans, null, dates, explicit tags) goes through PyYAML's
    constructors, errors included."""
    kind = type(event)
    if kind is yaml.ScalarEvent:
        return _scalar(loader, event)
    get = loader.get_event
    if kind is yaml.MappingStartEvent:
        if event.tag not in (None, "!", _MAPPING_TAG):
            raise _Fallback
        filename = loader.filename
        result = Node()
        mark = event.start_mark
        result.where = f"{filename}:{mark.line + 1}:{mark.column + 1}"
        key_where: dict[str, str] = {}
        result.key_where = key_where
        while True:
            event = get()
            if type(event) is yaml.MappingEndEvent:
                return result
            mark = event.start_mark
            at = f"{filename}:{mark.line + 1}:{mark.column + 1}"
            key = _read(loader, event)
            if not isinstance(key, str):
                raise MappingError(f"{at}: keys must be text, got {key!r}")
            if key in result:
                raise MappingError(f"{at}: duplicate key {key!r}")
            event = get()
            result[key] = (
                _scalar(loader, event) if type(event) is yaml.ScalarEvent else _read(loader, event)
            )
            key_where[key] = at
    if kind is yaml.SequenceStartEvent:
        if event.tag not in (None, "!", _SEQUENCE_TAG):
            raise _Fallback
        items: list[Any] = []
        while True:
            event = get()
            if type(event) is yaml.SequenceEndEvent:
                return items
            items.append(_read(loader, event))
    raise _Fallback  # an alias


def _read_document(loader: _Loader) -> Any:
    """The single document of the stream, as `get_single_data` would make it; None for
    an empty stream."""
    get = loader.get_event
    get()  # StreamStartEvent
    start = get()
    if type(start) is yaml.StreamEndEvent:
        return None
    value = _read(loader, get())
    get()  # DocumentEndEvent
    event = get()
    if type(event) is not yaml.StreamEndEvent:
        raise yaml.composer.ComposerError(
            "expected a single document in the stream",
            start.start_mark,
            "but found another document",
            event.start_mark,
        )
    return value


# Aliases may repeat a node; a file whose expansion is far larger than the file itself (a
# "billion laughs") is refused. Ordinary files, however many rules, expand by a factor ~1.
MAX_EXPANSION = 100_000  # expanded nodes beyond which the ratio is checked
MAX_RATIO = 20


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes `node` stands for once aliases are expanded (memoised per node)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a node that contains itself counts once here
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(
            _expanded_size(key, sizes) + _expanded_size(value, sizes) for key, value in node.value
        )
    sizes[id(node)] = total
    return total


def parse_yaml(text: str, filename: str) -> Any:
    loader: _Loader | None = None
    try:
        # Every alias is written `*name`: text without '*' has none, so nothing expands
        # and nothing is shared or recursive. That is nearly every mapping file; it is read
        # straight from the parser's events. The rest take PyYAML's own (slower) way.
        if _EVENTS and "*" not in text:
            loader = _Loader(text)
            loader.filename = filename
            try:
                return _read_document(loader)
            except _Fallback:
                loader.dispose()
        loader = _Loader(text)
        loader.filename = filename
        node = loader.get_single_node()
        if node is None:
            return None
        if "*" in text:
            sizes: dict[int, int] = {}
            expanded = _expanded_size(node, sizes)
            if expanded > MAX_EXPANSION and expanded > MAX_RATIO * len(sizes):
                raise MappingError(
                    f"{filename}: YAML aliases expand {len(sizes)} nodes to {expanded}; refused"
                )
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _pos(filename, mark) if mark is not None else filename
        raise MappingError(f"{where}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:  # e.g. a control character (ReaderError, no mark)
        raise MappingError(f"{filename}: invalid YAML: {exc}") from None
    except RecursionError:
        raise MappingError(f"{filename}: YAML nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # a value PyYAML cannot build: 2001-02-30
        if isinstance(exc, MappingError):
            raise
        raise MappingError(f"{filename}: invalid YAML value: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


class Reader:
    """Typed access to one YAML mapping with errors that point at the offending key."""

    def __init__(self, node: Any, where: str, what: str, allowed: set[str]) -> None:
        if not isinstance(node, Node):
            raise MappingError(f"{where}: {what} must be a mapping")
        self.node, self.what = node, what
        if allowed.issuperset(node):  # the usual case, without a loop in Python
            return
        for key in node:
            if key not in allowed:
                raise MappingError(
                    f"{node.key_where[key]}: unknown key {key!r} in {what}; "
                    f"expected one of {', '.join(sorted(allowed))}"
                )

    @property
    def where(self) -> str:
        return self.node.where

    def at(self, key: str) -> str:
        return self.node.key_where.get(key, self.node.where)

    def has(self, key: str) -> bool:
        return key in self.node and self.node[key] is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = self.node.get(key, default)
        return default if value is None else value

    def text(self, key: str, default: str | None = None) -> str:
        value = self.node.get(key)
        if type(value) is str:  # nearly always: 100,000 calls for 10,000 rules
            return value
        if value is None:
            value = default
        if value is None:
            raise MappingError(f"{self.node.where}: {self.what} needs {key!r}")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise MappingError(f"{self.at(key)}: {key!r} must be text")
        return str(value)

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if self.has(key) else None

    def fail(self, key: str, message: str) -> MappingError:
        return MappingError(f"{self.at(key)}: {message}")

    def sub(self, key: str, what: str, allowed: set[str]) -> Reader:
        return Reader(self.node.get(key), self.at(key), what, allowed)


def where_of(node: Any, fallback: str) -> str:
    return node.where if isinstance(node, Node) else fallback
