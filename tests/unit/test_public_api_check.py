"""The project's own lint check (.ci/public_api_check.py): it finds each kind of reach into
a library's internals, leaves the standard library and the project's own classes alone,
and the runtime passes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / ".ci" / "public_api_check.py"


def check(tmp_path: Path, source: str) -> list[str]:
    (tmp_path / "pkg").mkdir(exist_ok=True)
    (tmp_path / "pkg" / "mod.py").write_text(source, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(CHECK), "pkg"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == (1 if lines else 0), done.stderr
    return lines


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import paho.mqtt.client as mqtt\nclass C(mqtt.Client):\n    pass\n", "mqtt.Client"),
        (
            "from websockets.asyncio.client import ClientConnection\n"
            "class C(ClientConnection):\n    pass\n",
            "ClientConnection",
        ),
        ("from aiohttp import web\nclass R(web.Response):\n    pass\n", "web.Response"),
        (
            "import yaml\nBase = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)\n"
            "class L(Base):\n    pass\n",
            "derives from Base (yaml)",
        ),
        ("def f(client):\n    return getattr(client, '_packet_queue', None)\n", "_packet_queue"),
        ("def f(client):\n    return hasattr(client, '_sock_recv')\n", "_sock_recv"),
        ("def f(c):\n    setattr(c, '_userdata', 1)\n", "_userdata"),
        ("from paho.mqtt.client import _socketpair_compat\n", "private name"),
        ("import websockets.legacy._x\n", "private module"),
    ],
)
def test_each_reach_into_a_library_is_found(tmp_path: Path, source: str, found: str) -> None:
    lines = check(tmp_path, source)
    assert len(lines) == 1 and found in lines[0], lines
    assert lines[0].startswith("pkg/mod.py:")


def test_the_standard_library_and_own_names_are_fine(tmp_path: Path) -> None:
    source = (
        "import logging\nfrom enum import Enum\nfrom typing import Generic, Protocol, TypeVar\n"
        "T = TypeVar('T')\n"
        "class F(logging.Filter):\n    pass\n"
        "class E(Enum):\n    A = 1\n"
        "class P(Protocol):\n    pass\n"
        "class G(Generic[T]):\n    def f(self):\n        return getattr(self, '_x', None)\n"
        "class Mine(G[int]):\n    pass\n"
        "def g(o):\n    return getattr(o, '__name__')\n"
    )
    assert check(tmp_path, source) == []


def test_the_runtime_and_the_dev_tools_pass() -> None:
    done = subprocess.run(
        [sys.executable, str(CHECK), "adapter", "sepl_dev", "bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "")
