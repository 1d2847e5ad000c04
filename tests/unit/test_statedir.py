"""The state directory's lock and client id file (adapter/statedir.py), in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adapter.statedir import StateDirError, client_id, locked


def test_the_lock_is_exclusive_names_its_holder_and_is_released(tmp_path: Path) -> None:
    with locked(tmp_path):
        assert (tmp_path / "lock").read_text().strip() == str(os.getpid())
        # flock locks belong to the open file: a second open in the same process conflicts
        # as a second process does.
        with (
            pytest.raises(
                StateDirError, match=rf"in use by another sepl-adapter \(pid {os.getpid()}\)"
            ),
            locked(tmp_path),
        ):
            pass
    with locked(tmp_path):  # released when the first left
        pass


def test_a_client_id_is_made_once(tmp_path: Path) -> None:
    made = client_id(tmp_path)
    assert made.startswith("sepl-adapter-") and len(made) == len("sepl-adapter-") + 8
    assert client_id(tmp_path) == made
    (tmp_path / "mqtt-client-id").write_text("  kept-id \n")
    assert client_id(tmp_path) == "kept-id"


def test_a_new_client_id_names_the_instance_and_a_kept_one_stays(tmp_path: Path) -> None:
    made = client_id(tmp_path, "meters-1")
    assert (
        made.startswith("sepl-adapter-meters-1-") and len(made) == len("sepl-adapter-meters-1-") + 8
    )
    assert client_id(tmp_path, "renamed") == made  # the broker's session is kept
    assert client_id(tmp_path) == made


@pytest.mark.parametrize("content", [b"", b"\n", b"\x80", b"two\nlines", b"tab\there"])
def test_a_broken_client_id_file_is_an_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mqtt-client-id"
    path.write_bytes(content)
    with pytest.raises(StateDirError, match=str(path)) as info:
        client_id(tmp_path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == content


def test_an_unreadable_client_id_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "mqtt-client-id").mkdir()  # reading a directory fails, even as root
    with pytest.raises(StateDirError, match="cannot read the MQTT client id"):
        client_id(tmp_path)
