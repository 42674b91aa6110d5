"""The server's API as an OpenAPI 3 document (served at /openapi.json).

Written by hand next to the server and kept true by tests: every route the server answers is
here, and a schemathesis run checks the real server's answers against these schemas.
"""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {
        400: "malformed JSON",
        403: "this client may not reload (--admin-reload)",
        404: "unknown user or path",
        408: "the body did not arrive in time",
        409: "a reload is already in progress",
        413: "body or request too large",
        422: "invalid content (field, item, k, seq, history length; a refused cell)",
        500: "the user's stored state is unusable (non_finite, corrupt_state)",
        503: "retry: too many requests in progress (overloaded), the server is stopping "
        "(shutting_down), another writer kept changing the record (conflict), or the store "
        "is unavailable",
    }
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


def _user_links() -> dict:
    """Where an answer naming a user leads (schemathesis follows these statefully)."""
    user = {"user": "$response.body#/user"}
    return {
        name: {"operationId": op, "parameters": user}
        for name, op in (
            ("recommendations", "getRecommendations"),
            ("history", "getHistory"),
            ("delete", "deleteUser"),
        )
    }


ENUM_ITEMS = 5000  # catalogs up to this size are listed in the document (as item enums)


def document(info: Any, settings: Any) -> dict:
    """The document for a server of the cell `info` (a CellInfo) with `settings`. An item
    must be in the cell's vocabulary: listed as an enum when the catalog is small enough."""
    top_k = info.top_k
    user = {
        "name": "user",
        "in": "path",
        "required": True,
        "description": "the user id, percent-encoded (acme%2Falice is acme/alice)",
        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    }
    k = {
        "name": "k",
        "in": "query",
        "required": False,
        "description": f"recommendations to return, 1..{top_k} (default {top_k})",
        "schema": {"type": "integer", "minimum": 1, "maximum": top_k},
    }
    item: dict = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    ids = info.items[1:]
    if len(ids) <= ENUM_ITEMS:
        ints = [int(x) for x in ids if x.isascii() and x.isdigit() and str(int(x)) == x]
        item = {"oneOf": [{"type": "string", "enum": ids}, {"type": "integer", "enum": ints}]}
        if not ints:
            item = item["oneOf"][0]
    seq = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
    schemas = {
        "Error": {
            "type": "object",
            "required": ["error", "code"],
            "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
        },
        "Event": {
            "type": "object",
            "required": ["user", "item"],
            "properties": {
                "user": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]},
                "item": item,
                "seq": seq,
            },
        },
        "Recommendations": {
            "type": "object",
            "required": ["user", "items", "scores"],
            "properties": {
                "user": {"type": "string"},
                "items": {"type": "array", "items": {"type": "string"}, "maxItems": top_k},
                "scores": {"type": "array", "items": {"type": "number"}, "maxItems": top_k},
                "seq": seq,
                "applied": {"type": "boolean", "description": "false: answered, not applied"},
                "reason": {"type": "string", "enum": ["duplicate", "unknown_item"]},
                "reset": {
                    "type": "string",
                    "enum": ["cell_changed"],
                    "description": "the stored state was made by another cell and was dropped",
                },
                "cell": {"type": "string", "description": "short hash of the cell that answered"},
            },
        },
        "EventError": {
            "type": "object",
            "required": ["user", "error", "code"],
            "properties": {
                "user": {"type": "string"},
                "error": {"type": "string"},
                "code": {"type": "string"},
            },
        },
        "History": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": item, "maxItems": settings.max_history},
                "seq": seq,
            },
        },
        "StoredHistory": {
            "type": "object",
            "required": ["user", "items", "n", "seq", "current"],
            "properties": {
                "user": {"type": "string"},
                "items": {"type": "array", "items": {"type": "string"}},
                "n": {"type": "integer", "minimum": 0},
                "seq": {**seq, "nullable": True},
                "current": {"type": "boolean", "description": "made by the serving cell"},
            },
        },
    }
    events_body = {
        "oneOf": [
            _ref("Event"),
            {
                "type": "object",
                "required": ["events"],
                "properties": {
                    "events": {
                        "type": "array",
                        "items": _ref("Event"),
                        "maxItems": settings.max_events_per_request,
                    }
                },
            },
        ]
    }
    results = {
        "type": "object",
        "required": ["results", "failed"],
        "properties": {
            "results": {
                "type": "array",
                "items": {"oneOf": [_ref("Recommendations"), _ref("EventError")]},
            },
            "failed": {"type": "integer", "minimum": 0},
        },
    }
    paths = {
        "/v1/events": {
            "post": {
                "operationId": "postEvents",
                "summary": "apply one event, or a list of events in order",
                "parameters": [k],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": events_body}},
                },
                "responses": {
                    "200": _json(
                        {"oneOf": [_ref("Recommendations"), results]},
                        "every event answered (applied, or a duplicate/skipped one)",
                    ),
                    "207": _json(
                        results,
                        "partly applied: failed events carry their error (not_applied: the "
                        "engine failed on a later slice of this request)",
                    ),
                    **_errors(400, 408, 413, 422, 500, 503),
                },
            }
        },
        "/v1/stream": {
            "post": {
                "operationId": "postStream",
                "summary": "NDJSON events in, one NDJSON answer line per event line",
                "requestBody": {
                    "required": False,
                    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                },
                "responses": {
                    "200": {
                        "description": "one line per input line",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    **_errors(503),
                },
            }
        },
        "/v1/users/{user}/recommendations": {
            "get": {
                "operationId": "getRecommendations",
                "parameters": [user, k],
                "responses": {
                    "200": _json(_ref("Recommendations"), "the user's current top-k"),
                    **_errors(404, 422, 500, 503),
                },
            }
        },
        "/v1/users/{user}/history": {
            "get": {
                "operationId": "getHistory",
                "parameters": [user],
                "responses": {
                    "200": _json(_ref("StoredHistory"), "the user's stored recent items"),
                    **_errors(404, 422, 503),
                },
            },
            "put": {
                "operationId": "putHistory",
                "summary": "replace the user's state by replaying a history (oldest first)",
                "parameters": [user, k],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("History")}},
                },
                "responses": {
                    "200": {
                        **_json(_ref("Recommendations"), "the top-k after the history"),
                        "links": _user_links(),
                    },
                    **_errors(400, 408, 413, 422, 500, 503),
                },
            },
        },
        "/v1/users/{user}": {
            "delete": {
                "operationId": "deleteUser",
                "parameters": [user],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["user", "deleted"],
                            "properties": {
                                "user": {"type": "string"},
                                "deleted": {"type": "boolean"},
                            },
                        },
                        "deleted: whether the user had a record",
                    ),
                    **_errors(422, 503),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status", "cell", "items", "k", "state_size"],
                            "properties": {
                                "status": {"type": "string", "enum": ["ok", "starting"]},
                                "cell": {"type": "string"},
                                "items": {"type": "integer"},
                                "k": {"type": "integer"},
                                "state_size": {"type": "integer"},
                                "providers": {"type": "array", "items": {"type": "string"}},
                                "store": {"type": "string"},
                            },
                        },
                        "the server and its cell",
                    ),
                    **_errors(503),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(503),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "responses": {
                    "200": _json({"type": "object"}, "this document"),
                    **_errors(503),
                },
            }
        },
        "/admin/reload": {
            "post": {
                "operationId": "reload",
                "summary": "swap the serving cell live (operators; loopback-only by default)",
                "requestBody": {
                    "required": False,
                    "description": "empty: reload the last cell path",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"onnx": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["cell", "previous", "items", "k", "states", "pending"],
                            "properties": {
                                "cell": {"type": "string"},
                                "previous": {"type": "string"},
                                "items": {"type": "integer"},
                                "k": {"type": "integer"},
                                "states": {"type": "string"},
                                "pending": {"type": "integer", "minimum": 0},
                            },
                        },
                        "the new cell serves; pending: stored users its sweep has yet to visit",
                    ),
                    **_errors(400, 403, 408, 409, 413, 422, 503),
                },
            }
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "recblr-serve", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
