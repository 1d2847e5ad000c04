"""The envelope dialect (protocol Part 2 §2, "Era B"): a pure codec, no I/O.

Both the client and the sandbox platform use this module, so the byte layouts of each side
are written down once: the client serialises like the v3/v4 Python client (`json.dumps`
defaults, fixed key order), the server like Go's `json.Marshal` (compact, map keys sorted,
HTML characters escaped).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from adapter import fastjson

CREDENTIALS_TOKEN = "credentials"
CLIENT_HANDLERS = frozenset({"clear", "put", "disconnect", "delete", "commit", "event", "response"})
SERVER_HANDLERS = frozenset({"response", "command"})


class ProtocolError(ValueError):
    """A frame that breaks a rule of the protocol; the message names the rule."""


@dataclass(frozen=True, init=False)
class Envelope:
    status: int
    handler: str
    token: str
    content_type: str
    payload: Any

    def __init__(
        self, status: int, handler: str, token: str, content_type: str, payload: Any
    ) -> None:
        # One per answer: a frozen dataclass's own __init__ sets each field through
        # object.__setattr__, three times the cost of filling the instance dict.
        fields = self.__dict__
        fields["status"] = status
        fields["handler"] = handler
        fields["token"] = token
        fields["content_type"] = content_type
        fields["payload"] = payload


# --- client side -------------------------------------------------------------------------


def encode_credentials(user: str, password: str, gid: str) -> str:
    return json.dumps({"user": user, "pw": password, "gid": gid, "token": CREDENTIALS_TOKEN})


def encode_request(handler: str, token: str, payload: Any, content_type: str = "") -> str:
    """A client frame, key order and spacing as the v3/v4 client writes it."""
    return json.dumps(
        {
            "status": 0,
            "handler": handler,
            "token": token,
            "content_type": content_type,
            "payload": payload,
        },
        ensure_ascii=False,
    )


_encode_string = json.encoder.encode_basestring  # json.dumps(str, ensure_ascii=False)


def encode_event_request(
    token: str, device_uri: str, service_uri: str, data: str, metadata: str
) -> str:
    """`encode_request("event", token, event_payload(...))`, byte for byte, without the
    generic serialiser: one frame per event makes this the hottest encoder."""
    return (
        '{"status": 0, "handler": "event", "token": '
        + _encode_string(token)
        + ', "content_type": "", "payload": {"device_uri": '
        + _encode_string(device_uri)
        + ', "service_uri": '
        + _encode_string(service_uri)
        + ', "value": [{"name": "metadata", "value": '
        + _encode_string(metadata)
        + '}, {"name": "data", "value": '
        + _encode_string(data)
        + "}]}}"
    )


# An event frame beyond its texts: the envelope's keys, a uuid4 token (36) and, in the
# legacy dialect, the flat command object's other keys. Generous: it only decides when
# the exact size must be computed.
_FRAME_OVERHEAD = 512
# A character of a JSON string takes at most 6 bytes: "\u001f" for a control character;
# UTF-8 takes at most 4 bytes for one character, 6 for a surrogate pair's two escapes.
_MAX_BYTES_PER_CHAR = 6


def event_frame_size(device_uri: str, service_uri: str, data: str, metadata: str) -> int:
    """Bytes of the event frame `encode_event_request` writes for these texts."""
    frame = encode_event_request("0" * 36, device_uri, service_uri, data, metadata)
    return len(frame.encode("utf-8", "surrogatepass"))


def event_frame_fits(
    device_uri: str, service_uri: str, data: str, metadata: str, max_bytes: int
) -> bool:
    """Whether the event's frame is at most `max_bytes` (EVENT_MAX_BYTES): a bound on the
    characters first, so only large events are encoded to be measured."""
    chars = len(device_uri) + len(service_uri) + len(data) + len(metadata)
    if chars * _MAX_BYTES_PER_CHAR + _FRAME_OVERHEAD <= max_bytes:
        return True
    return event_frame_size(device_uri, service_uri, data, metadata) <= max_bytes


def decode_server_frame(text: str | bytes) -> Envelope:
    """Parse a frame sent by the platform (a `response` or a `command`)."""
    obj = _json_object(text)
    status = obj.get("status", 0)
    if isinstance(status, bool) or not isinstance(status, int):
        raise ProtocolError(f"status must be an integer, got {_short(status)}")
    handler = obj.get("handler")
    if not isinstance(handler, str) or handler not in SERVER_HANDLERS:
        raise ProtocolError(f"unknown handler from platform: {_short(handler)}")
    token = obj.get("token") or ""
    if not isinstance(token, str):
        raise ProtocolError(f"token must be a string, got {_short(token)}")
    content_type = obj.get("content_type") or ""
    if not isinstance(content_type, str):
        raise ProtocolError(f"content_type must be a string, got {_short(content_type)}")
    return Envelope(status, handler, token, content_type, obj.get("payload"))


def decode_handshake_answer(text: str | bytes) -> tuple[str, str]:
    """The answer to the credentials frame: returns (gid, hash). Part 2 §2.6 step 6-7."""
    env = decode_server_frame(text)
    if env.handler != "response" or env.token != CREDENTIALS_TOKEN:
        raise ProtocolError(
            f"handshake answer must be a response with token 'credentials', "
            f"got handler {env.handler!r} token {env.token!r}"
        )
    if env.status != 200:
        raise ProtocolError(f"handshake refused with status {env.status}: {_short(env.payload)}")
    payload = env.payload
    if not isinstance(payload, dict):
        raise ProtocolError(f"handshake payload must be an object, got {_short(payload)}")
    gid, hash_ = payload.get("gid"), payload.get("hash") or ""
    if not isinstance(gid, str) or not gid:
        raise ProtocolError(f"handshake gid must be a non-empty string, got {_short(gid)}")
    if not isinstance(hash_, str):
        raise ProtocolError(f"handshake hash must be a string, got {_short(hash_)}")
    return gid, hash_


# --- server side -------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str
    gid: str
    token: str


def decode_credentials(text: str | bytes) -> Credentials:
    obj = _json_object(text)
    values = {}
    for key in ("user", "pw", "gid", "token"):
        value = obj.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ProtocolError(f"credentials field {key!r} must be a string")
        values[key] = value
    return Credentials(values["user"], values["pw"], values["gid"], values["token"])


def decode_client_frame(text: str | bytes) -> Envelope:
    """Parse a client frame. The server reads only handler, token and payload (§2.2)."""
    obj = _json_object(text)
    handler = obj.get("handler")
    token = obj.get("token")
    if not isinstance(token, str):
        token = ""
    if not isinstance(handler, str):
        handler = ""
    return Envelope(0, handler, token, "", obj.get("payload"))


def content_type_of(payload: Any) -> str:
    """Go's kind name after a JSON round trip (§2.5): numbers are always float64."""
    if isinstance(payload, bool):
        return "bool"
    if isinstance(payload, int | float):
        return "float64"
    if isinstance(payload, str):
        return "string"
    if isinstance(payload, dict):
        return "map"
    if isinstance(payload, list):
        return "slice"
    return ""


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def go_json(value: Any) -> str:
    """Serialise like Go's json.Marshal of map/interface values."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    # json.Marshal escapes HTML-significant characters and the JS line separators; they can
    # only occur inside strings, so replacing them in the output is safe.
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    # A lone surrogate (from a "\\ud800" escape in a peer's frame) cannot be sent as UTF-8;
    # Go decodes such escapes to U+FFFD, so the echo carries U+FFFD as well.
    return _LONE_SURROGATE.sub("\ufffd", text)


def encode_server_frame(status: int, handler: str, token: str, payload: Any) -> str:
    """A platform frame: fixed field order, content_type derived from the payload."""
    return (
        f'{{"status":{status},"handler":{go_json(handler)},"token":{go_json(token)},'
        f'"content_type":{go_json(content_type_of(payload))},"payload":{go_json(payload)}}}'
    )


def encode_response(status: int, token: str, payload: Any) -> str:
    return encode_server_frame(status, "response", token, payload)


def encode_command(command: dict[str, Any]) -> str:
    return encode_server_frame(0, "command", "", command)


# --- shared ------------------------------------------------------------------------------


def _json_object(text: str | bytes) -> dict[str, Any]:
    try:
        obj = fastjson.loads_text(text) if isinstance(text, str) else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    except RecursionError:  # e.g. "[[[[…" nested deeper than the interpreter's stack
        raise ProtocolError("frame is not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame must be a JSON object, got {type(obj).__name__}")
    return obj


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
