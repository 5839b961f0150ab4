"""Logging set-up: one line per event, as text or JSON."""

from __future__ import annotations

import logging
import sys
import time

import orjson

#: Libraries whose own lines would repeat URLs (with their query strings) and addresses: only
#: their warnings are kept. asyncgate's own lines say what happened, without the secrets.
QUIET_LOGGERS = ("httpx", "httpcore", "redis", "hpack")


#: Structured fields a log call may pass in ``extra``; JSON lines carry them as keys.
_FIELDS = ("run_id", "method", "path", "status", "upstream_status", "duration_ms")


class JSONFormatter(logging.Formatter):
    """One JSON object per line, with the fields a log pipeline indexes."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _FIELDS:
            if field in record.__dict__:
                entry[field] = record.__dict__[field]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access lines come from the gateway's own log, not uvicorn's second copy.
    logging.getLogger("uvicorn.access").disabled = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
