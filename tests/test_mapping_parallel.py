"""adapter/mapping/parallel.py: a forked child compiles the later files; whatever it does,
the result is what compiling in one process gives, errors included."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from adapter.mapping import cache, load_directory, parallel
from adapter.mapping.compile import compile_files
from adapter.mapping.yamlsource import MappingError

Source = tuple[Path, bytes]


def rule_file(first: int, count: int) -> bytes:
    lines = ["family: site", 'device_type: "iot#plug"', "rules:"]
    for i in range(first, first + count):
        lines += [
            f"  - id: site{i}",
            f'    topic: "site{i}/tele/{{topic}}/SENSOR"',
            f'    device: {{uri: "site{i}:{{topic}}", name: "Site {i} {{topic}}"}}',
            "    readings: {power: ENERGY.Power, voltage: {path: ENERGY.Voltage, scale: 0.1}}",
        ]
    return ("\n".join(lines) + "\n").encode()


def sources(tmp_path: Path, files: int = 6, per_file: int = 50) -> list[Source]:
    return [(tmp_path / f"m{n}.yaml", rule_file(n * per_file, per_file)) for n in range(files)]


def sequential(items: list[Source]) -> list[cache.Compiled]:
    return [compile_files([source]) for source in items]


@pytest.fixture
def forking(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Small sets take the forked way too; the children's pids are recorded."""
    monkeypatch.setattr(parallel, "MIN_BYTES", 0)
    monkeypatch.setattr(parallel, "_cpus", lambda: 2)
    children: list[int] = []
    real = parallel._fork_child

    def recording(items: list[Source], fd: int) -> int | None:
        pid = real(items, fd)
        if pid is not None:
            children.append(pid)
        return pid

    monkeypatch.setattr(parallel, "_fork_child", recording)
    return children


def test_the_forked_way_compiles_what_one_process_does(tmp_path: Path, forking: list[int]) -> None:
    items = sources(tmp_path)
    results = parallel.compile_sources(items)
    assert len(forking) == 1
    assert [value for value, _ in results] == sequential(items)
    split = parallel._split(items)
    assert split is not None and 0 < split < len(items)
    # The child's files come with their pickles (the cache takes them as they are).
    assert [blob is None for _, blob in results] == [i < split for i in range(len(items))]
    for (value, blob), _ in zip(results[split:], items[split:], strict=True):
        assert blob is not None and cache.loads(blob) == value


@pytest.mark.parametrize("broken", [[1], [4], [4, 5], [0, 5]])
def test_the_first_failing_file_is_reported_as_one_process_reports_it(
    tmp_path: Path, forking: list[int], broken: list[int]
) -> None:
    items = sources(tmp_path)
    for index in broken:
        path, data = items[index]
        items[index] = (path, data.replace(b"scale: 0.1", b"scale: x", 1))
    with pytest.raises(MappingError) as expected:
        sequential(items)
    with pytest.raises(MappingError) as got:
        parallel.compile_sources(items)
    assert str(got.value) == str(expected.value)
    assert f"m{broken[0]}.yaml" in str(got.value)
    assert forking and all(_reaped(pid) for pid in forking)


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_files_the_child_does_not_hand_over_are_compiled_here(
    tmp_path: Path, forking: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = sources(tmp_path, files=8)
    real = parallel._write
    written: list[int] = []

    def dying(out: object, kind: bytes, payload: bytes) -> None:
        # In the child: one record whole, one cut short, then the child is gone.
        written.append(1)
        if len(written) == 1:
            real(out, kind, payload)  # type: ignore[arg-type]
        else:
            real(out, kind, payload[: len(payload) // 2])  # type: ignore[arg-type]
            out.flush()  # type: ignore[attr-defined]
            os._exit(1)

    monkeypatch.setattr(parallel, "_write", dying)
    results = parallel.compile_sources(items)
    assert [value for value, _ in results] == sequential(items)
    split = parallel._split(items)
    assert split is not None
    assert [blob is not None for _, blob in results[split:]] == [True] + [False] * (
        len(items) - split - 1
    )


def test_unpicklable_or_unreadable_hand_overs_are_compiled_here(
    tmp_path: Path, forking: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = sources(tmp_path)
    monkeypatch.setattr(cache, "dumps", lambda compiled: None)
    results = parallel.compile_sources(items)
    assert [value for value, _ in results] == sequential(items)
    assert all(blob is None for _, blob in results)


def test_no_fork_with_other_threads_small_sets_or_when_fork_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = sources(tmp_path)
    monkeypatch.setattr(parallel, "_cpus", lambda: 2)
    assert parallel._split(items) is None  # under MIN_BYTES
    monkeypatch.setattr(parallel, "MIN_BYTES", 0)
    assert parallel._split(items) is not None
    assert parallel._split(items[:1]) is None
    monkeypatch.setattr(parallel, "_cpus", lambda: 1)
    assert parallel._split(items) is None
    monkeypatch.setattr(parallel, "_cpus", lambda: 2)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert parallel._split(items) is None
    finally:
        stop.set()
        other.join()

    def refused() -> int:
        raise OSError("no more processes")

    monkeypatch.setattr(os, "fork", refused)
    assert [value for value, _ in parallel.compile_sources(items)] == sequential(items)


def test_a_large_first_load_fills_the_cache_with_every_file(
    tmp_path: Path, forking: list[int]
) -> None:
    directory = tmp_path / "mappings"
    directory.mkdir()
    for path, data in sources(tmp_path):
        (directory / path.name).write_bytes(data)
    state = tmp_path / "state"
    first = load_directory(directory, cache_dir=state)
    assert forking
    stored = cache.load(state)
    assert stored is not None and len(stored.entries) == 6
    again = load_directory(directory, cache_dir=state)
    assert again.rules == first.rules == load_directory(directory).rules
