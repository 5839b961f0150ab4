from __future__ import annotations

import logging

import orjson

from asyncgate.logs import JSONFormatter


def test_json_lines_carry_structured_fields() -> None:
    record = logging.LogRecord("asyncgate.access", logging.INFO, __file__, 1, "%s %s %d", ("GET", "/x", 200), None)
    record.__dict__.update({"method": "GET", "path": "/x", "status": 200, "duration_ms": 1.5, "ignored": "no"})
    line = orjson.loads(JSONFormatter().format(record))
    assert line["message"] == "GET /x 200"
    assert line["level"] == "info"
    assert line["logger"] == "asyncgate.access"
    assert (line["method"], line["path"], line["status"], line["duration_ms"]) == ("GET", "/x", 200, 1.5)
    assert "ignored" not in line
    assert line["time"].endswith("Z")
