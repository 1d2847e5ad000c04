"""Start-up with many rules: the YAML fast path gives what PyYAML's constructors give, and
the cache of compiled mapping files (adapter/mapping/cache.py) behaves like a fresh load,
follows edits, survives damage and never mixes up prefixes."""

from __future__ import annotations

import functools
import gc
import hashlib
import io
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import adapter.mapping
from adapter.devbroker import Broker
from adapter.devstack import SandboxProcess
from adapter.mapping import MappingError, MappingSet, cache, load_directory
from adapter.mapping.compile import compile_files
from adapter.mapping.rules import _MISSING, CommandRule, Rule
from adapter.mapping.yamlsource import Node, _Loader, parse_yaml
from tests.processes import REPO, AdapterProcess, wait_until
from tests.test_bundled_mappings import (
    AVAILABILITY,
    COMMANDS,
    CORRELATION,
    DROPPED,
    EVENTS,
    MAPPINGS,
    RECEIVED,
    file_text,
)

SITE_RULE = """  - id: site{i}-sensor
    topic: "site{i}/tele/{{topic}}/SENSOR"
    device: {{uri: "site{i}:{{topic}}", name: "Site {i} {{topic}}"}}
    readings: {{power: ENERGY.Power, voltage: {{path: ENERGY.Voltage, scale: 0.5}}}}
"""


def sites(first: int, count: int) -> str:
    rules = "".join(SITE_RULE.format(i=i) for i in range(first, first + count))
    return 'family: bench\ndevice_type: "iot#bench-plug"\nrules:\n' + rules


@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    """The bundled files, disabled ones enabled, and two files of generated rules."""
    directory = tmp_path / "mappings"
    directory.mkdir()
    for path in MAPPINGS.glob("*.yaml"):
        (directory / path.name).write_text(file_text(path.name, enable=True), encoding="utf-8")
    (directory / "sites-a.yaml").write_text(sites(0, 50), encoding="utf-8")
    (directory / "sites-b.yml").write_text(sites(50, 50), encoding="utf-8")
    return directory


class Compiles:
    """Counts the files load_directory compiles (the rest came from the cache)."""

    def __init__(self) -> None:
        self.files: list[str] = []


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> Compiles:
    seen = Compiles()
    real = compile_files

    def counting(sources: Any) -> Any:
        seen.files += [Path(path).name for path, _ in sources]
        return real(sources)

    monkeypatch.setattr("adapter.mapping.parallel.compile_files", counting)
    return seen


def same_behaviour(a: MappingSet, b: MappingSet) -> None:
    assert a.rules == b.rules
    assert a.commands == b.commands
    assert a.files == b.files
    assert a.filters == b.filters
    assert a.device_types() == b.device_types()
    topics = [(e.topic, e.payload) for e in EVENTS]
    topics += [(topic, payload) for _, topic, payload, _, _ in AVAILABILITY]
    topics += [(topic, "{}") for topic in DROPPED]
    topics += [("site7/tele/plug/SENSOR", '{"ENERGY":{"Power":5,"Voltage":230}}')]
    for topic, payload in topics:
        assert a.map(topic, payload.encode(), RECEIVED) == b.map(topic, payload.encode(), RECEIVED)
    for command in COMMANDS:
        plan_a = a.plan_command(command.device, command.service, command.data, CORRELATION)
        plan_b = b.plan_command(command.device, command.service, command.data, CORRELATION)
        assert plan_a == plan_b
        if plan_a is not None and plan_b is not None and command.reply is not None:
            reply = command.reply.encode()
            assert a.reply_data(plan_a, reply) == b.reply_data(plan_b, reply)


# --- the cache -------------------------------------------------------------------------


def test_a_cache_hit_behaves_like_a_fresh_load(
    mappings: Path, tmp_path: Path, compiles: Compiles
) -> None:
    fresh = load_directory(mappings, "gw")
    compiles.files.clear()
    first = load_directory(mappings, "gw", cache_dir=tmp_path / "cache")
    assert len(compiles.files) == 11  # nothing cached yet: every file compiled
    assert (tmp_path / "cache" / cache.FILE_NAME).is_file()
    compiles.files.clear()
    second = load_directory(mappings, "gw", cache_dir=tmp_path / "cache")
    assert compiles.files == []  # all from the cache
    same_behaviour(fresh, first)
    same_behaviour(fresh, second)
    # Condition.equals keeps its sentinel's identity through the cache.
    conditions = [c for rule in second.rules for c in rule.when]
    assert any(c.equals is _MISSING for c in conditions)
    assert any(c.equals is not _MISSING for c in conditions)


def test_an_edited_file_is_compiled_again_and_only_that_one(
    mappings: Path, tmp_path: Path, compiles: Compiles
) -> None:
    cache_dir = tmp_path / "cache"
    load_directory(mappings, cache_dir=cache_dir)
    path = mappings / "sites-a.yaml"
    stat = path.stat()
    # Same size, same modification time: only the bytes tell.
    path.write_text(path.read_text().replace("ENERGY.Power", "ENERGY.Watts"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    compiles.files.clear()
    edited = load_directory(mappings, cache_dir=cache_dir)
    assert compiles.files == ["sites-a.yaml"]
    rule = next(rule for rule in edited.rules if rule.id == "site0-sensor")
    assert rule.readings[0].path.text == "ENERGY.Watts"
    same_behaviour(edited, load_directory(mappings))
    compiles.files.clear()
    load_directory(mappings, cache_dir=cache_dir)
    assert compiles.files == []


def test_added_removed_and_renamed_files(mappings: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    load_directory(mappings, cache_dir=cache_dir)
    (mappings / "sites-b.yml").rename(mappings / "sites-c.yaml")
    renamed = load_directory(mappings, cache_dir=cache_dir)
    rule = next(rule for rule in renamed.rules if rule.id == "site99-sensor")
    assert rule.where.startswith(f"{mappings / 'sites-c.yaml'}:")
    (mappings / "sites-c.yaml").unlink()
    removed = load_directory(mappings, cache_dir=cache_dir)
    assert not any(rule.id == "site99-sensor" for rule in removed.rules)
    same_behaviour(removed, load_directory(mappings))


def test_a_different_prefix_is_not_mixed_up(mappings: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    message = b'{"ENERGY":{"Power":5}}'
    for _ in range(2):  # a miss, then hits with the cache the other prefix wrote
        for prefix in ("one", "two", ""):
            loaded = load_directory(mappings, prefix, cache_dir=cache_dir)
            outcome = loaded.map("site3/tele/plug/SENSOR", message, RECEIVED)
            assert isinstance(outcome, adapter.mapping.Mapped)
            assert outcome.device.uri == (f"{prefix}:site3:plug" if prefix else "site3:plug")
            assert loaded.prefix == prefix
            plan = loaded.plan_command(
                f"{prefix}:tasmota:kitchen" if prefix else "tasmota:kitchen", "on", ""
            )
            assert plan is not None and "kitchen" in plan.topic
            if prefix:
                assert loaded.plan_command("tasmota:kitchen", "on", "") is None


@pytest.mark.parametrize(
    "damage",
    ["empty", "truncated", "flipped", "garbage", "other code", "evil pickle", "directory"],
)
def test_a_damaged_or_foreign_cache_is_ignored_and_rewritten(
    mappings: Path, tmp_path: Path, compiles: Compiles, damage: str
) -> None:
    cache_dir = tmp_path / "cache"
    fresh = load_directory(mappings, cache_dir=cache_dir)
    path = cache_dir / cache.FILE_NAME
    data = path.read_bytes()
    marker = tmp_path / "pwned"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "other code":
        path.write_bytes(data[:8] + bytes(32) + data[40:])
    elif damage == "evil pickle":
        # A well-formed file of this code whose entries would run a command when
        # unpickled by a plain pickle.load: the cache's unpickler refuses the call.
        class Evil:
            def __reduce__(self) -> tuple[Any, ...]:
                return os.system, (f"touch {marker}",)

        stored = cache.load(cache_dir)
        assert stored is not None
        evil = pickle.dumps(([Evil()], []))
        cache.write(cache_dir, stored.checked, {key: evil for key in stored.entries})
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    compiles.files.clear()
    loaded = load_directory(mappings, cache_dir=cache_dir)
    assert len(compiles.files) == 11
    assert not marker.exists()
    same_behaviour(fresh, loaded)
    if damage != "directory":  # rewritten: the next load is a hit again
        compiles.files.clear()
        load_directory(mappings, cache_dir=cache_dir)
        assert compiles.files == []


def test_the_unpickler_takes_only_mapping_classes() -> None:
    for module, name in [
        ("os", "system"),
        ("builtins", "getattr"),
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("adapter.mapping.rules", "json"),  # a module imported there, not a class
        ("adapter.mapping.rules", "cached_property"),  # a class imported there
        ("adapter.mapping.rules", "fill"),  # a function
        ("adapter.mapping.rules", "Rule.__init__"),
    ]:
        with pytest.raises(pickle.UnpicklingError):
            cache.SafeUnpickler(io.BytesIO(b"")).find_class(module, name)
    assert cache.SafeUnpickler(io.BytesIO(b"")).find_class("adapter.mapping.rules", "Rule") is Rule


def test_an_unwritable_cache_directory_only_costs_the_cache(mappings: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    loaded = load_directory(mappings, cache_dir=blocker / "cache")
    same_behaviour(loaded, load_directory(mappings))
    assert list(tmp_path.glob("**/.mappings.*.tmp")) == []


def test_errors_keep_their_locations_and_are_not_cached(
    mappings: Path, tmp_path: Path, compiles: Compiles
) -> None:
    cache_dir = tmp_path / "cache"
    load_directory(mappings, cache_dir=cache_dir)
    broken = mappings / "sites-a.yaml"
    good = broken.read_text()
    broken.write_text(good.replace("    readings:", "    readinx:", 1))
    for _ in range(2):
        with pytest.raises(MappingError, match=rf"^{broken}:7:5: unknown key 'readinx'"):
            load_directory(mappings, cache_dir=cache_dir)
    broken.write_text(good)
    compiles.files.clear()
    load_directory(mappings, cache_dir=cache_dir)
    assert compiles.files == []  # the good version is still cached


def test_the_check_across_files_runs_whenever_the_set_changes(
    mappings: Path, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    load_directory(mappings, cache_dir=cache_dir)
    clash = mappings / "zz-clash.yaml"
    clash.write_text("rules:\n  - {id: clash, topic: 'site1/tele/{t}/SENSOR', device: 'x:{t}'}\n")
    for _ in range(2):  # each file compiled and cached, the set still refused
        with pytest.raises(MappingError, match=rf"^{clash}:2:5: rules 'site1-sensor'"):
            load_directory(mappings, cache_dir=cache_dir)
    clash.unlink()
    load_directory(mappings, cache_dir=cache_dir)


def test_duplicate_ids_across_files_are_still_refused_from_the_cache(
    mappings: Path, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    load_directory(mappings, cache_dir=cache_dir)
    shutil.copy(mappings / "sites-a.yaml", mappings / "sites-copy.yaml")
    with pytest.raises(MappingError, match="rule id 'site0-sensor' is already used"):
        load_directory(mappings, cache_dir=cache_dir)


def test_the_cache_key_covers_name_and_bytes() -> None:
    a = cache.file_key(Path("m/a.yaml"), b"rules: []\n")
    assert a == cache.file_key(Path("m/a.yaml"), b"rules: []\n")
    assert a != cache.file_key(Path("m/b.yaml"), b"rules: []\n")
    assert a != cache.file_key(Path("m/a.yaml"), b"rules: [] \n")
    assert cache.set_key([a], "x") != cache.set_key([a], "y")
    assert cache.set_key([a, a], "") != cache.set_key([a], "")
    assert cache.enabled()  # the source of this checkout can be hashed


# --- the parser's fast path ------------------------------------------------------------


def slow_parse(text: str, filename: str) -> Any:
    """PyYAML's own constructors, as parse_yaml takes them for text with aliases."""
    loader = _Loader(text)
    loader.filename = filename
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def same_tree(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, Node):
        assert (a.where, a.key_where) == (b.where, b.key_where)
        assert list(a) == list(b)
        for key in a:
            same_tree(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same_tree(x, y)
    else:
        assert a == b or (a != a and b != b)  # NaN


ODD_DOCUMENTS = [
    "a: 1\nb: 1.5\nc: .inf\nd: -.nan\ne: 0x1f\nf: 1_000\ng: 0o17\n",
    "a: yes\nb: off\nc: ~\nd: null\ne: ''\nf: \"\"\ng:\n",
    "a: 2001-12-14t21:59:43.10-05:00\nb: 2002-12-14\nc: !!binary aGVsbG8=\n",
    "a: !!str 123\nb: !!int '7'\nc: !!float '1'\nd: !!set {x, y}\ne: !!omap [{a: 1}]\n",
    "? [a, b]\n: c\n",
    "1: x\n",
    "a: {b: [1, {c: d}], e: []}\nf: [[], {}, [[]]]\n",
    "- |\n  block\n  text\n- >\n  folded\n  text\n- 'single'\n- \"dou\\tble\"\n",
    "a: 2001-02-30\n",
    "a: 1\na: 2\n",
    "a: !!python/name:os.system x\n",
    "<<: {a: 1}\nb: 2\n",
    "a: =\n",
    "'': x\n'~': y\n",
    "rules:\n  - id: x\n    topic: t/{x}\n    when: {path: v, equals: 1e400}\n",
    # What the event reader handles itself, or leaves to PyYAML's composer.
    "",
    "# only a comment\n",
    "---\n",
    "--- \n...\n",
    "a: 1\n---\nb: 2\n",
    "a: 1\n...\n---\n",
    "a: &x 1\nb: &y {c: d}\n",
    "a: ! 12\nb: ! {c: 1}\nc: ! [1]\n",
    "!!map {a: 1}\n",
    "- !!seq [a, 1]\n- !!map {b: 2}\n- !!str [x]\n",
    "a: !custom x\n",
    "{a: 1}: b\n",
    "[a]: b\n",
    "? |\n  multi\n  line key\n: v\n",
    "a: [" * 40 + "]" * 40 + "\n",
    "a: 'unterminated\n",
    "a: b: c\n",
    "- a\nb: c\n",
    'a: "\\u00e9\\x41"\nb: "\\t"\n',
    "a: 0b101\nb: +12\nc: -0.5e3\nd: .NaN\ne: True\nf: NO\ng: 1:20\n",
]


@pytest.mark.parametrize("text", ODD_DOCUMENTS)
def test_the_fast_path_builds_what_pyyaml_builds(text: str) -> None:
    try:
        expected: Any = slow_parse(text, "m.yaml")
    except MappingError as exc:
        with pytest.raises(MappingError) as caught:
            parse_yaml(text, "m.yaml")
        assert str(caught.value) == str(exc)
        return
    except Exception:  # a YAML error: parse_yaml words it, both must fail
        with pytest.raises(MappingError):
            parse_yaml(text, "m.yaml")
        return
    same_tree(parse_yaml(text, "m.yaml"), expected)


@pytest.mark.parametrize("name", sorted(p.name for p in MAPPINGS.glob("*.yaml")))
def test_the_fast_path_builds_the_bundled_files_as_pyyaml_does(name: str) -> None:
    text = file_text(name, enable=True)
    same_tree(parse_yaml(text.replace("*", "+"), name), slow_parse(text.replace("*", "+"), name))


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
def test_the_fast_path_builds_what_pyyaml_builds_for_any_tree(
    tree: Any, flow: bool | None, explicit: bool
) -> None:
    text = yaml.safe_dump(
        tree, default_flow_style=flow, explicit_start=explicit, allow_unicode=True
    )
    same_tree(parse_yaml(text, "m.yaml"), slow_parse(text, "m.yaml"))


def test_text_with_aliases_takes_pyyaml_s_way_with_its_checks() -> None:
    text = "base: &b {path: x, exists: true}\nrules:\n  - {id: a, topic: 't/{x}', when: *b }\n"
    same_tree(parse_yaml(text, "m.yaml"), slow_parse(text, "m.yaml"))
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefg":
        previous = chr(ord(level) - 1)
        laughs += f"{level}: &{level} [{', '.join(['*' + previous] * 10)}]\n"
    with pytest.raises(MappingError, match="YAML aliases expand"):
        parse_yaml(laughs, "m.yaml")


# --- the collector ----------------------------------------------------------------------


@pytest.fixture
def gc_state() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_restores_the_collector(
    mappings: Path, tmp_path: Path, gc_state: None, enabled: bool
) -> None:
    if enabled:
        gc.enable()
    else:
        gc.disable()
    load_directory(mappings, cache_dir=tmp_path / "cache")
    assert gc.isenabled() is enabled
    (mappings / "zz-broken.yaml").write_text("rules: [\n")
    with pytest.raises(MappingError):
        load_directory(mappings, cache_dir=tmp_path / "cache")
    assert gc.isenabled() is enabled


def test_cache_entries_hold_only_rules_and_commands(mappings: Path, tmp_path: Path) -> None:
    load_directory(mappings, cache_dir=tmp_path / "cache")
    stored = cache.load(tmp_path / "cache")
    assert stored is not None and len(stored.entries) == 11
    for blob in stored.entries.values():
        compiled = cache.loads(blob)
        assert compiled is not None
        assert all(type(r) is Rule for r in compiled[0])
        assert all(type(c) is CommandRule for c in compiled[1])
    body = (tmp_path / "cache" / cache.FILE_NAME).read_bytes()
    assert hashlib.sha256(body[72:]).digest() == body[40:72]


def test_derived_values_cached_on_rules_are_left_out(mappings: Path) -> None:
    """Whatever a cached_property computed on a rule (closures, say) is not stored: the
    cache stays writable once MappingSet or `map` has touched the rules."""
    path = mappings / "sites-a.yaml"
    rules, commands = compile_files([(path, path.read_bytes())])
    derived = [
        name for name in dir(Rule) if isinstance(getattr(Rule, name), functools.cached_property)
    ]
    for rule in rules:
        for name in derived:
            getattr(rule, name)
    blob = cache.dumps((rules, commands))
    assert blob is not None
    loaded = cache.loads(blob)
    assert loaded is not None and loaded == (rules, commands)
    for rule in loaded[0]:
        assert not set(derived) & set(vars(rule))


# --- the adapter writes the cache after start-up -------------------------------------------


def test_the_adapter_writes_the_cache_after_start_up_or_on_the_way_out(
    broker: Broker, sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """A first start compiles and connects first; the cache follows a moment later, or at
    the stop when that comes sooner. Either way the next start finds it."""
    bundled = len(list((REPO / "mappings").glob("*.yaml")))
    for name, stop_at_once in (("stopped", True), ("running", False)):
        state = tmp_path / name
        stored = state / "mappings-cache"
        process = AdapterProcess(
            mqtt_port=broker.port,
            connector_url=sandbox.ws_url,
            state_dir=state,
            log_path=tmp_path / f"{name}.log",
        )
        try:
            process.start()
            if not stop_at_once:
                written = functools.partial(lambda path: cache.load(path) is not None, stored)
                wait_until(written, 15, "the cache written")
        finally:
            process.stop()
        found = cache.load(stored)
        assert found is not None and len(found.entries) == bundled, name
        assert found.checked != cache.UNCHECKED
