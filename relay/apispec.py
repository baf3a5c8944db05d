"""The HTTP API's definitions: what each endpoint takes and answers, in one place.

relay.api validates every request with these objects, and :func:`openapi` turns the same objects
into the OpenAPI 3.1 document served at ``/api/v1/openapi.json``, so the document and the
checks cannot drift apart. Validation is plain Python over a few field kinds (a JSON Schema
engine per request would cost more than the publish it guards).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay import names
from relay.errors import BadRequest

Schema = dict[str, Any]

#: the JSON Schema of what each kind of field accepts (``any``: every JSON value)
_CHARS = names.ALLOWED_CHARS
KINDS: dict[str, Schema] = {
    "any": {},
    "event": {
        "type": "string",
        "pattern": f"^{_CHARS}{{1,64}}$",
        "description": "event name (default 'message'; names the contract reserves are refused)",
    },
    "room": {"type": "string", "pattern": f"^{_CHARS}{{1,128}}$"},
    "user": {"type": "string", "pattern": f"^{_CHARS}{{1,64}}$"},
    "sid": {"type": "string", "minLength": 1, "maxLength": 64},
}

#: checks of each field kind: value -> normalised value, or BadRequest
CHECKS: dict[str, Callable[[Any], Any]] = {
    "any": lambda value: value,
    "event": names.event_name,
    "room": names.room_name,
    "user": names.user_name,
    "sid": lambda value: names.sid(value, "to"),
}


@dataclass(frozen=True)
class Field:
    name: str
    kind: str
    required: bool = False
    description: str = ""

    def schema(self) -> Schema:
        out = dict(KINDS[self.kind])
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Body:
    """A JSON object body: its fields; any other field is refused, named."""

    fields: tuple[Field, ...]
    #: at most one of these fields may be present, and exactly one must (a target)
    one_of: tuple[str, ...] = ()

    def check(self, body: Any, where: str = "the body") -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest(f"{where} must be a JSON object, got {_json_type(body)}")
        known = {f.name: f for f in self.fields}
        for key in body:
            if key not in known:
                takes = ", ".join(repr(f.name) for f in self.fields)
                raise BadRequest(f"unknown field {key!r} in {where}; it takes {takes}")
        out: dict[str, Any] = {}
        for f in self.fields:
            # (null is absent, except for data, whose null is a value)
            if f.name not in body or (body[f.name] is None and f.kind != "any"):
                if f.required:
                    raise BadRequest(f"{where} needs {f.name!r}")
                continue
            out[f.name] = CHECKS[f.kind](body[f.name])
        if self.one_of:
            given = [name for name in self.one_of if name in out]
            if len(given) != 1:
                options = " or ".join(repr(name) for name in self.one_of)
                raise BadRequest(f"{where} takes exactly one of {options}")
        return out

    def schema(self) -> Schema:
        out: Schema = {
            "type": "object",
            "properties": {f.name: f.schema() for f in self.fields},
            "additionalProperties": False,
        }
        required = [f.name for f in self.fields if f.required]
        if required:
            out["required"] = required
        if self.one_of:
            out["oneOf"] = [{"required": [name]} for name in self.one_of]
        return out


@dataclass(frozen=True)
class QueryInt:
    name: str
    default: int
    low: int
    high: int
    description: str = ""

    def read(self, query: Mapping[str, str]) -> int:
        raw = query.get(self.name)
        if raw is None or raw == "":
            return self.default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"{self.name!r} must be an integer, got {raw!r}") from None
        if not self.low <= value <= self.high:
            raise BadRequest(
                f"{self.name!r} must be between {self.low} and {self.high}, got {value}"
            )
        return value

    def parameter(self) -> Schema:
        return {
            "name": self.name,
            "in": "query",
            "required": False,
            "description": self.description,
            "schema": {
                "type": "integer",
                "minimum": self.low,
                "maximum": self.high,
                "default": self.default,
            },
        }


@dataclass(frozen=True)
class QueryStr:
    name: str
    kind: str
    description: str = ""

    def read(self, query: Mapping[str, str]) -> Any:
        raw = query.get(self.name)
        if raw is None or raw == "":
            return None
        return CHECKS[self.kind](raw)

    def parameter(self) -> Schema:
        return {
            "name": self.name,
            "in": "query",
            "required": False,
            "description": self.description,
            "schema": KINDS[self.kind],
        }


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form: /api/v1/rooms/{room}/events
    operation_id: str
    summary: str
    #: path parameter -> field kind
    params: tuple[tuple[str, str], ...] = ()
    query: tuple[QueryInt | QueryStr, ...] = ()
    body: Body | None = None
    answer: Schema = field(default_factory=dict)
    #: error statuses this endpoint may answer besides the ones every endpoint may
    errors: tuple[int, ...] = ()


# -- the definitions ------------------------------------------------------------------------------

EVENT_BODY = Body(
    (
        Field("event", "event", description="event name; default 'message'"),
        Field("data", "any", required=True, description="any JSON value (null included)"),
    )
)

#: most items a batch may hold
BATCH_MAX = 100

BATCH_ITEM = Body(
    (
        Field("room", "room", description="publish to this room (gets the room's next offset)"),
        Field("user", "user", description="send to every connection of this user"),
        Field("to", "sid", description="send to this one connection"),
        Field("event", "event", description="event name; default 'message'"),
        Field("data", "any", required=True, description="any JSON value (null included)"),
    ),
    one_of=("room", "user", "to"),
)

BATCH_BODY = Body(
    (
        Field(
            "items",
            "any",
            required=True,
            description=f"1 to {BATCH_MAX} items, each a publish (room) or a send (user or to)",
        ),
    )
)

HISTORY_SINCE = QueryInt("since", 0, 0, 2**63 - 1, "messages with an offset greater than this")
HISTORY_LIMIT = QueryInt("limit", 100, 1, 1000, "most messages in the page")
ROOMS_AFTER = QueryStr("after", "room", "the last room of the previous page (rooms are sorted)")
ROOMS_LIMIT = QueryInt("limit", 100, 1, 1000, "most rooms in the page")

_ID = {"type": "string", "description": "the message's id"}
_OFFSET = {"type": "integer", "minimum": 1, "description": "the room's offset of the message"}
_DELIVERED = {"type": "integer", "minimum": 0, "description": "connections it was written to"}
_MEMBER = {
    "type": "object",
    "properties": {"sid": {"type": "string"}, "user": {"type": ["string", "null"]}},
    "required": ["sid", "user"],
}
ERROR_BODY: Schema = {
    "type": "object",
    "properties": {
        "code": {
            "type": "string",
            "enum": [
                "bad_request",
                "unauthorized",
                "forbidden",
                "not_found",
                "too_large",
                "rate_limited",
                "unavailable",
                "internal",
            ],
        },
        "message": {"type": "string"},
    },
    "required": ["code", "message"],
}
ERROR: Schema = {
    "type": "object",
    "properties": {"error": ERROR_BODY},
    "required": ["error"],
}
_ENVELOPE = {
    "type": "object",
    "description": "a message envelope, as Socket.IO clients receive it",
    "properties": {
        "id": {"type": "string"},
        "room": {"type": ["string", "null"]},
        "event": {"type": "string"},
        "from": {"type": "object"},
        "data": {},
        "offset": {"type": ["integer", "null"]},
        "ts": {"type": "integer"},
    },
    "required": ["id", "room", "event", "from", "data", "offset", "ts"],
}


def _object(props: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {"type": "object", "properties": props, "required": required or list(props)}


PUBLISHED = _object({"id": _ID, "offset": _OFFSET})
SENT = _object({"id": _ID, "delivered": _DELIVERED})
BATCH_RESULT = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "id": _ID,
        "offset": _OFFSET,
        "delivered": _DELIVERED,
        "error": ERROR_BODY,
    },
    "required": ["ok"],
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/api/v1/rooms/{room}/events",
        "publishToRoom",
        "Publish to a room: every member gets it, with the room's next offset",
        params=(("room", "room"),),
        body=EVENT_BODY,
        answer=PUBLISHED,
        errors=(413, 503),
    ),
    Operation(
        "POST",
        "/api/v1/users/{user}/events",
        "sendToUser",
        "Send to every connection of one user (an unknown user: delivered 0)",
        params=(("user", "user"),),
        body=EVENT_BODY,
        answer=SENT,
        errors=(413, 503),
    ),
    Operation(
        "POST",
        "/api/v1/connections/{sid}/events",
        "sendToConnection",
        "Send to one connection (an unknown sid: delivered 0)",
        params=(("sid", "sid"),),
        body=EVENT_BODY,
        answer=SENT,
        errors=(413, 503),
    ),
    Operation(
        "POST",
        "/api/v1/batch",
        "batch",
        f"Up to {BATCH_MAX} publishes and sends in one request, answered item by item in order",
        body=BATCH_BODY,
        answer=_object(
            {"results": {"type": "array", "items": BATCH_RESULT, "maxItems": BATCH_MAX}}
        ),
        errors=(413, 503),
    ),
    Operation(
        "GET",
        "/api/v1/rooms",
        "listRooms",
        "Rooms with members, sorted by name, a page at a time",
        query=(ROOMS_AFTER, ROOMS_LIMIT),
        answer=_object(
            {
                "rooms": {
                    "type": "array",
                    "items": _object({"room": {"type": "string"}, "members": {"type": "integer"}}),
                },
                "next": {
                    "type": ["string", "null"],
                    "description": "pass as 'after' for the next page; null on the last",
                },
            }
        ),
        errors=(503,),
    ),
    Operation(
        "GET",
        "/api/v1/rooms/{room}/members",
        "roomMembers",
        "A room's members (none for a room nobody is in)",
        params=(("room", "room"),),
        answer=_object(
            {"room": {"type": "string"}, "members": {"type": "array", "items": _MEMBER}}
        ),
        errors=(503,),
    ),
    Operation(
        "GET",
        "/api/v1/rooms/{room}/history",
        "roomHistory",
        "The oldest messages after 'since', in offset order (page forward with the last offset)",
        params=(("room", "room"),),
        query=(HISTORY_SINCE, HISTORY_LIMIT),
        answer=_object(
            {
                "room": {"type": "string"},
                "epoch": {
                    "type": "string",
                    "description": "the life of the room's offsets (absent for an unknown room)",
                },
                "messages": {"type": "array", "items": _ENVELOPE},
            },
            ["room", "messages"],
        ),
        errors=(503,),
    ),
    Operation(
        "GET",
        "/api/v1/connections/{sid}",
        "getConnection",
        "One connection: its user, rooms, when it connected and over which transport",
        params=(("sid", "sid"),),
        answer=_object(
            {
                "sid": {"type": "string"},
                "user": {"type": ["string", "null"]},
                "rooms": {"type": "array", "items": {"type": "string"}},
                "connected_at": {"type": "integer", "description": "Unix time in ms"},
                "transport": {"type": "string", "enum": ["websocket", "polling"]},
            }
        ),
        errors=(404, 503),
    ),
    Operation(
        "DELETE",
        "/api/v1/connections/{sid}",
        "disconnectConnection",
        "Disconnect one connection (its client sees a server disconnect, and does not "
        "reconnect on its own)",
        params=(("sid", "sid"),),
        answer=_object({"ok": {"type": "boolean"}, "sid": {"type": "string"}}),
        errors=(404, 503),
    ),
)

#: errors any endpoint may answer (with a key set: 401; always: 400 and 429)
COMMON_ERRORS = (400, 401, 429)
_STATUS_TEXT = {
    400: "bad request",
    401: "missing or wrong API key",
    404: "not found",
    413: "too large",
    415: "the body is not application/json",
    429: "rate limited (see Retry-After)",
    503: "unavailable",
}


def openapi(version: str) -> Schema:
    """The OpenAPI 3.1 document of :data:`OPERATIONS`."""
    paths: dict[str, Schema] = {}
    for op in OPERATIONS:
        parameters: list[Schema] = [
            {"name": name, "in": "path", "required": True, "schema": KINDS[kind]}
            for name, kind in op.params
        ]
        parameters += [q.parameter() for q in op.query]
        responses: dict[str, Schema] = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": op.answer}},
            }
        }
        statuses = set(COMMON_ERRORS) | set(op.errors)
        if op.body is not None:
            statuses |= {413, 415}
        for status in sorted(statuses):
            responses[str(status)] = {
                "description": _STATUS_TEXT[status],
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        entry: Schema = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "parameters": parameters,
            "responses": responses,
        }
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": op.body.schema()}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    batch = paths["/api/v1/batch"]["post"]["requestBody"]["content"]["application/json"]
    batch["schema"]["properties"]["items"] = {
        "type": "array",
        "minItems": 1,
        "maxItems": BATCH_MAX,
        "items": BATCH_ITEM.schema(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relay HTTP API",
            "version": version,
            "description": "Publish into relay and look at its rooms and connections from "
            "backends that hold no socket.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}, {}],
    }


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


__all__ = ["BATCH_ITEM", "BATCH_MAX", "EVENT_BODY", "OPERATIONS", "Body", "Field", "openapi"]
