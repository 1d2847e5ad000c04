"""Frame boundaries in the byte stream a websocket client receives (RFC 6455 §5.2): a pure
splitter, no I/O.

The client reads most of its frames without the websockets library's general parser: an
answer to an event is a small unfragmented text frame, and parsing it through the library
(a generator per frame, a queue, a task switch per message) cost more than the answer's
own handling. The splitter finds such frames in the stream and hands everything else on
unchanged, cut at frame boundaries, so the library's parser only ever sees whole frames
of a valid stream and keeps doing all of the protocol: control frames, fragments,
compression, errors.
"""

from __future__ import annotations

_END_OF_HEADERS = b"\r\n\r\n"
_FIN_TEXT = 0x81  # FIN set, no reserved bits (so not compressed), opcode 1: text
_MASKED = 0x80


class FrameSplitter:
    """`feed` returns, in stream order, the complete unfragmented unmasked text frames of
    at most `max_text` bytes as (text, raw frame) and everything else as bytes to hand to
    the general parser. With `after_http`, the stream starts with the HTTP answer to the
    upgrade request, which is handed on whole first."""

    def __init__(self, max_text: int, *, after_http: bool = True) -> None:
        self.max_text = max_text
        self._in_http = after_http
        self._buffer = b""
        self._passing = 0  # bytes of a handed-on frame still to come

    def feed(self, data: bytes) -> list[bytes | tuple[str, bytes]]:
        out: list[bytes | tuple[str, bytes]] = []
        passed: list[bytes] = []  # adjacent handed-on pieces, joined into one
        buf = self._buffer + data if self._buffer else data
        pos, size = 0, len(buf)
        if self._in_http:
            # A 101 answer has no body: the frames start after its blank line (which may
            # straddle two reads: the search covers the kept bytes too).
            end = buf.find(_END_OF_HEADERS)
            if end < 0:
                self._buffer = buf
                return out
            self._in_http = False
            pos = end + len(_END_OF_HEADERS)
            passed.append(buf[:pos])
        if self._passing:
            take = min(self._passing, size - pos)
            passed.append(buf[pos : pos + take])
            self._passing -= take
            pos += take
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                head = 4
                if size - pos < head:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            elif length == 127:
                head = 10
                if size - pos < head:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if second & _MASKED:
                head += 4
            end = pos + head + length
            if first == _FIN_TEXT and not second & _MASKED and length <= self.max_text:
                if end > size:
                    break  # wait for the rest of it
                try:
                    text = buf[pos + head : end].decode("utf-8")
                except UnicodeDecodeError:
                    pass  # the general parser fails the connection, as it should (1007)
                else:
                    if passed:
                        out.append(b"".join(passed))
                        passed = []
                    out.append((text, buf[pos:end]))
                    pos = end
                    continue
            elif size - pos < head:
                break
            # Handed on as it comes, without waiting for the whole frame: the general
            # parser closes a connection over a frame too large as soon as it sees the
            # header.
            take = min(end, size)
            passed.append(buf[pos:take])
            self._passing = end - take
            pos = take
        self._buffer = buf[pos:] if pos < size else b""
        if passed:
            out.append(b"".join(passed))
        return out

    def rest(self) -> bytes:
        """What was read and not handed out yet (an incomplete frame or header)."""
        rest, self._buffer = self._buffer, b""
        return rest
