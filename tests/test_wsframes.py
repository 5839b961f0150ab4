"""WebSocket frame headers read across reads, and the close frames the gateway writes."""

from __future__ import annotations

from asyncgate.wsframes import FrameMeter, close_frame


def test_frame_meter_adds_fragments_and_skips_control_frames() -> None:
    meter = FrameMeter(limit=10)
    text6 = b"\x01\x06" + b"a" * 6  # a text fragment, not final
    ping = b"\x89\x04ping"
    cont5 = b"\x80\x05" + b"b" * 5  # the final continuation: 11 bytes in all
    data = text6 + ping + cont5
    assert meter.feed(data[:3]) is None  # split anywhere, headers included
    assert meter.feed(data[3:9]) is None
    assert meter.feed(data[9:]) == len(text6) + len(ping) - 9
    masked = FrameMeter(limit=200)
    assert masked.feed(b"\x82\xfe\x00\xc8mask" + b"x" * 200) is None
    assert masked.feed(b"\x82\xfe\x00\xc9mask") == 0
    assert close_frame(1009, masked=False) == b"\x88\x02\x03\xf1"
    assert len(close_frame(1009, masked=True)) == 8


def test_a_64_bit_length_is_read() -> None:
    meter = FrameMeter(limit=1 << 20)
    assert meter.feed(b"\x82\x7f" + (1 << 20).to_bytes(8, "big")) is None
    assert meter.skip == 1 << 20
    assert FrameMeter(limit=1 << 20).feed(b"\x82\x7f" + ((1 << 20) + 1).to_bytes(8, "big")) == 0
