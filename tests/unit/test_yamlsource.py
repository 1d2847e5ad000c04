"""Mapping files as YAML: the values PyYAML's safe loader gives, plus the position of every
mapping and key, and clear errors for what cannot be read."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.mapping.yamlsource import MappingError, Node, parse_yaml
from tests.unit.test_bundled_mappings import MAPPINGS, file_text


def plain(value: Any) -> Any:
    """A parsed tree with its Nodes as plain dicts, for comparison with yaml.safe_load."""
    if isinstance(value, Node):
        assert set(value.key_where) == set(value)
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def same(a: Any, b: Any) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    else:
        assert a == b or (a != a and b != b)  # NaN


DOCUMENTS = [
    "a: 1\nb: 1.5\nc: .inf\nd: -.nan\ne: 0x1f\nf: 1_000\ng: 0o17\n",
    "a: yes\nb: off\nc: ~\nd: null\ne: ''\nf: \"\"\ng:\n",
    "a: 2001-12-14t21:59:43.10-05:00\nb: 2002-12-14\nc: !!binary aGVsbG8=\n",
    "a: !!str 123\nb: !!int '7'\nc: !!float '1'\nd: !!set {x, y}\ne: !!omap [{a: 1}]\n",
    "a: {b: [1, {c: d}], e: []}\nf: [[], {}, [[]]]\n",
    "- |\n  block\n  text\n- >\n  folded\n  text\n- 'single'\n- \"dou\\tble\"\n",
    "<<: {a: 1}\nb: 2\n",
    "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n",
    "a: &x 1\nb: &y {c: d}\nc: *x\nd: *y\n",
    "a: ! 12\nb: ! {c: 1}\nc: ! [1]\n",
    "!!map {a: 1}\n",
    "- !!seq [a, 1]\n- !!map {b: 2}\n",
    "'': x\n'~': y\n",
    "a: [" * 40 + "]" * 40 + "\n",
    'a: "\\u00e9\\x41"\nb: "\\t"\n',
    "a: 0b101\nb: +12\nc: -0.5e3\nd: .NaN\ne: True\nf: NO\ng: 1:20\n",
    "# only a comment\n",
    "---\n",
    "--- \n...\n",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_values_are_what_the_safe_loader_gives(text: str) -> None:
    same(plain(parse_yaml(text, "m.yaml")), yaml.safe_load(text))


@pytest.mark.parametrize("name", sorted(p.name for p in MAPPINGS.glob("*.yaml")))
def test_the_bundled_files_read_as_the_safe_loader_reads_them(name: str) -> None:
    text = file_text(name, enable=True)
    same(plain(parse_yaml(text, name)), yaml.safe_load(text))


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["yes", "off", "~", "0x1f", "1_000", "2001-12-14", "1e3", "-", "#", ": x"]),
)
_TREES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_TREES, st.sampled_from([None, True, False]), st.booleans())
def test_any_tree_reads_as_the_safe_loader_reads_it(
    tree: Any, flow: bool | None, explicit: bool
) -> None:
    text = yaml.safe_dump(
        tree, default_flow_style=flow, explicit_start=explicit, allow_unicode=True
    )
    same(plain(parse_yaml(text, "m.yaml")), yaml.safe_load(text))


def test_mappings_and_keys_know_where_they_stand() -> None:
    doc = parse_yaml("rules:\n  - id: a\n    topic: t/x\n  - {id: b, topic: y}\n", "m.yaml")
    assert doc.where == "m.yaml:1:1"
    assert doc.key_where == {"rules": "m.yaml:1:1"}
    first, second = doc["rules"]
    assert first.where == "m.yaml:2:5"
    assert first.key_where == {"id": "m.yaml:2:5", "topic": "m.yaml:3:5"}
    assert second.key_where == {"id": "m.yaml:4:6", "topic": "m.yaml:4:13"}


def test_merged_keys_point_at_the_mapping_they_came_from() -> None:
    doc = parse_yaml("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n", "m.yaml")
    assert doc["other"] == {"x": 1, "y": 2}
    assert doc["other"].key_where["x"] == "m.yaml:1:11"
    assert doc["other"].key_where["y"] == "m.yaml:4:3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "m.yaml:2:1: duplicate key 'a'"),
        ("1: x\n", "m.yaml:1:1: keys must be text, got 1"),
        ("? [a, b]\n: c\n", "m.yaml:1:3: keys must be text"),
        ("a: 2001-02-30\n", "m.yaml:1:4: invalid YAML value"),
        ("a: !!python/name:os.system x\n", "invalid YAML"),
        ("a: !custom x\n", "invalid YAML"),
        ("a: 'unterminated\n", "m.yaml:2:1: invalid YAML"),
        ("a: b: c\n", "m.yaml:1:5: invalid YAML"),
        ("- a\nb: c\n", "invalid YAML"),
        ("a: 1\n---\nb: 2\n", "invalid YAML"),
        ("a: &r [1, *r]\n", "m.yaml:1:4: recursive YAML alias"),
        ("<<: [1]\n", "m.yaml:1:1: '<<' merges mappings only"),
        ("a: \x07\n", "m.yaml: invalid YAML"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "m.yaml"),
    ],
)
def test_what_cannot_be_read_is_one_error_with_its_place(text: str, message: str) -> None:
    with pytest.raises(MappingError) as caught:
        parse_yaml(text, "m.yaml")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_alias_bomb_is_refused() -> None:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefg":
        previous = chr(ord(level) - 1)
        laughs += f"{level}: &{level} [{', '.join(['*' + previous] * 10)}]\n"
    with pytest.raises(MappingError, match="YAML aliases expand"):
        parse_yaml(laughs, "m.yaml")
