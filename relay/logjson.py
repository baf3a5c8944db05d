"""``RELAY_LOG_FORMAT=json``: every log record as one JSON object on one line.

Each line has ``ts`` (ISO 8601, UTC, milliseconds), ``level`` (``INFO``, ...), ``logger`` and
``message``; uvicorn's access lines add ``client``, ``method``, ``path``, ``http_version`` and
``status``; a record with an exception adds ``exc``, its traceback as one string (escaped into
the line, never printed over several). :func:`json_config` turns uvicorn's logging dict (see
relay.server.log_config) into this format: its formatters, and the root logger too, so that a
library's warnings are JSON as well.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import orjson

#: uvicorn's access record's ``args``: (client, method, path, HTTP version, status)
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            out.update(zip(_ACCESS_FIELDS, args, strict=True))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


def json_config(config: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's logging dict ``config`` with every formatter JSON (changed in place)."""
    for name in config["formatters"]:
        config["formatters"][name] = {"()": JsonFormatter}
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


__all__ = ["JsonFormatter", "json_config"]
