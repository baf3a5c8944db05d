"""The one reading of a relay's address, shared by every command (and ``loadtest``'s scenarios).

Pure: no I/O, nothing imported but the standard library and :mod:`relay.errors`.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from relay.errors import BadRequest


def normalize_url(raw: str, name: str = "--url") -> str:
    """``host:port``, ``http(s)://...`` or ``ws(s)://...`` -> the HTTP base URL of a relay.

    ``name`` is what the error calls the value (``--url``, or a scenario file's ``url``).
    """
    text = raw.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"{name} must look like http://host:port or host:port, got {raw!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise BadRequest(f"{name} has a bad port: {raw!r}") from None
    path = parts.path.rstrip("/")
    if path.endswith("/socket.io"):
        path = path[: -len("/socket.io")]
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


__all__ = ["normalize_url"]
