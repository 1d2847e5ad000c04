"""The outbox hands its new rows to the sender, and notices rows another process added."""

from __future__ import annotations

import base64
from pathlib import Path

from adapter.mapping.eventparts import payload_text_pieces
from adapter.outbox import NewEvent, Outbox
from adapter.sepl.device import Device

PLUG = Device("tasmota:plug", "Plug", "iot#plug", (("vendor", "tasmota"),))


def event(n: int) -> NewEvent:
    return NewEvent(PLUG, "sepl_get", f'{{"n":{n}}}', "{}", "rule")


def test_add_returns_the_stored_entries_with_their_sequence_numbers(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    first = outbox.add([event(0), event(1)], now=100.0)
    second = outbox.add([event(2)], now=101.0)
    stored = outbox.after(0, 10)
    assert [e.seq for e in first + second] == [e.seq for e in stored] == [1, 2, 3]
    assert first + second == stored  # same device, data, metadata, rule, time, attempts
    outbox.delete([1, 2])
    assert [e.seq for e in outbox.add([event(3)])] == [4]  # AUTOINCREMENT never reuses


def test_rows_of_another_process_are_noticed_once(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    adapter, cli = Outbox(path), Outbox(path)
    adapter.add([event(0)])
    assert not adapter.written_elsewhere()
    cli.add_dead_letters([(event(1), "refused")])
    assert cli.replay() == 1  # `sepl-adapter deadletters replay` while the adapter runs
    assert adapter.written_elsewhere()
    assert not adapter.written_elsewhere()
    adapter.add([event(2)])
    assert not adapter.written_elsewhere()


def test_a_device_read_back_is_shared_between_rows(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add([event(n) for n in range(3)])
    devices = {id(e.device) for e in Outbox(tmp_path / "outbox.sqlite3").after(0, 10)}
    assert len(devices) == 1


def test_a_payload_kept_in_pieces_reads_back_as_text(tmp_path: Path) -> None:
    """A payload too large to send is written through blob I/O; listing and replay give
    the text, as for any other dead letter."""
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    payload = "Größe ".encode() * 2_000_000
    outbox.add_raw_dead_letter(event(0), payload_text_pieces(payload), "too large")
    binary = b"\xff" * 100_001
    outbox.add_raw_dead_letter(event(1), payload_text_pieces(binary), "too large")
    first, second = outbox.dead_letters()
    assert first["data"] == payload.decode()
    assert (second["data"], second["reason"]) == (base64.b64encode(binary).decode(), "too large")
    assert outbox.replay([first["id"]]) == 1
    (entry,) = outbox.after(0, 10)
    assert entry.data == payload.decode()
