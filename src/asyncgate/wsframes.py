"""WebSocket frames as a relay sees them (RFC 6455 5.2): headers read to bound message sizes,
payloads never touched; and the one frame the gateway writes itself, a close."""

from __future__ import annotations

import os
import struct

#: Opcodes of control frames start here; the others carry (parts of) messages.
_CONTROL = 0x8


def close_frame(code: int, masked: bool) -> bytes:
    """A close frame with ``code``: masked as a client sends it, unmasked as a server does."""
    payload = struct.pack("!H", code)
    if not masked:
        return b"\x88" + bytes([len(payload)]) + payload
    mask = os.urandom(4)
    return b"\x88" + bytes([0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class FrameMeter:
    """Follows one direction's frame headers (RFC 6455 5.2) without touching payloads, to bound
    the size of each message, fragments added up."""

    __slots__ = ("head", "limit", "message", "skip")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.skip = 0  # payload bytes of the current frame still to pass
        self.head = b""  # a frame header split across reads
        self.message = 0

    def feed(self, data: bytes) -> int | None:
        """Where in ``data`` the first frame starts that takes its message past the limit, or None."""
        pos, end = 0, len(data)
        while pos < end:
            if self.skip:
                step = min(self.skip, end - pos)
                self.skip -= step
                pos += step
                continue
            start = pos - len(self.head)
            buf = self.head + data[pos : pos + 14 - len(self.head)]
            size = _header_size(buf)
            if size is None:
                self.head = buf
                return None
            pos += size - len(self.head)
            self.head = b""
            opcode = buf[0] & 0x0F
            length = _payload_length(buf)
            if opcode < _CONTROL:
                self.message = length if opcode else self.message + length
                if self.message > self.limit:
                    return max(start, 0)
            self.skip = length
        return None


def _header_size(buf: bytes) -> int | None:
    if len(buf) < 2:
        return None
    short = buf[1] & 0x7F
    size = 2 + (2 if short == 126 else 8 if short == 127 else 0) + (4 if buf[1] & 0x80 else 0)
    return size if len(buf) >= size else None


def _payload_length(buf: bytes) -> int:
    short = buf[1] & 0x7F
    if short == 126:
        return int(struct.unpack_from("!H", buf, 2)[0])
    if short == 127:
        return int(struct.unpack_from("!Q", buf, 2)[0])
    return short
