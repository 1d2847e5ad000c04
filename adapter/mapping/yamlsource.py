"""YAML with positions: every mapping node knows its `file:line:column`, so errors in
mapping files point at the key that is wrong.

PyYAML composes the document into nodes (its public `compose`, libyaml's parser when
PyYAML has it); the nodes are turned into values here, mappings into `Node`s that keep the
marks, and every other scalar through PyYAML's safe constructor.
"""

from __future__ import annotations

from typing import Any

import yaml

_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_MERGE_TAG = "tag:yaml.org,2002:merge"

# Aliases may repeat a node; a file whose expansion is far larger than the file itself (a
# "billion laughs") is refused. Ordinary files expand by a factor of about 1.
MAX_EXPANSION = 100_000  # expanded nodes beyond which the ratio is checked
MAX_RATIO = 20


class MappingError(ValueError):
    """A mapping file is wrong; the message starts with `file:line:column:`."""


class Node(dict[str, Any]):
    """A YAML mapping that remembers where it and each of its keys stand."""

    where: str = "?"
    key_where: dict[str, str]


def _pos(filename: str, mark: Any) -> str:
    return f"{filename}:{mark.line + 1}:{mark.column + 1}"


class _Builder:
    """Values from composed nodes; `active` holds the collections being built, so an alias
    of an enclosing node (a recursive document) is an error instead of endless work."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.constructor = yaml.constructor.SafeConstructor()
        self.active: set[int] = set()

    def value(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _STR_TAG:
                return node.value
            return self._constructed(node)
        if id(node) in self.active:
            raise MappingError(f"{_pos(self.filename, node.start_mark)}: recursive YAML alias")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
                return self._mapping(node)
            if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
                return [self.value(item) for item in node.value]
            return self._constructed(node)  # !!set, !!omap, !!pairs: PyYAML's own types
        finally:
            self.active.discard(id(node))

    def _constructed(self, node: yaml.Node) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError:
            raise
        except (ValueError, OverflowError, TypeError) as exc:  # 2001-02-30, unhashable keys
            raise MappingError(
                f"{_pos(self.filename, node.start_mark)}: invalid YAML value: {exc}"
            ) from None

    def _mapping(self, node: yaml.MappingNode) -> Node:
        own = Node()
        own.where = _pos(self.filename, node.start_mark)
        own.key_where = {}
        merged: list[Node] = []
        for key_node, value_node in node.value:
            at = _pos(self.filename, key_node.start_mark)
            if key_node.tag == _MERGE_TAG:  # `<<: *base`: keys the mapping does not set
                merged += self._merge_sources(value_node, at)
                continue
            key = self.value(key_node)
            if not isinstance(key, str):
                raise MappingError(f"{at}: keys must be text, got {key!r}")
            if key in own:
                raise MappingError(f"{at}: duplicate key {key!r}")
            own[key] = self.value(value_node)
            own.key_where[key] = at
        if not merged:
            return own
        # PyYAML's order: the merged keys first, each with the mapping's own value if set.
        result = Node()
        result.where, result.key_where = own.where, {}
        for source in [*merged, own]:
            for key in source:
                if key not in result:
                    chosen = own if key in own else source
                    result[key] = chosen[key]
                    result.key_where[key] = chosen.key_where.get(key, chosen.where)
        return result

    def _merge_sources(self, node: yaml.Node, at: str) -> list[Node]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        sources = [self.value(item) for item in items]
        if not all(isinstance(source, Node) for source in sources):
            raise MappingError(f"{at}: '<<' merges mappings only")
        return sources


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
    """The single document of `text` (None when empty), mappings as `Node`s."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
        if node is None:
            return None
        if "*" in text:  # every alias is written `*name`: without one nothing expands
            sizes: dict[int, int] = {}
            expanded = _expanded_size(node, sizes)
            if expanded > MAX_EXPANSION and expanded > MAX_RATIO * len(sizes):
                raise MappingError(
                    f"{filename}: YAML aliases expand {len(sizes)} nodes to {expanded}; refused"
                )
        return _Builder(filename).value(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _pos(filename, mark) if mark is not None else filename
        raise MappingError(f"{where}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:  # e.g. a control character (ReaderError, no mark)
        raise MappingError(f"{filename}: invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise MappingError(f"{filename}: YAML nested too deeply") from None


class Reader:
    """Typed access to one YAML mapping with errors that point at the offending key."""

    def __init__(self, node: Any, where: str, what: str, allowed: set[str]) -> None:
        if not isinstance(node, Node):
            raise MappingError(f"{where}: {what} must be a mapping")
        self.node, self.what = node, what
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
