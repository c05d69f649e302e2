"""JSON Schemas of every wire message, exported into ``drivers/schemas/``.

Regenerate after changing a message type with ``python -m drivers.schema``; a test
fails when the committed schemas and the code disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from drivers.base import COMMAND_ADAPTER, PROTOCOL_VERSION, Ack, Capabilities, FrameHeader
from drivers.codec import CLIENT_OPTIONS, WIRE_REQUIRED

SCHEMA_DIR = Path(__file__).parent / "schemas"


def _envelope(kind: str, body: dict[str, Any] | None = None, required: tuple[str, ...] = ()) -> dict[str, Any]:
    props: dict[str, Any] = {"v": {"const": PROTOCOL_VERSION}, "type": {"const": kind}, **(body or {})}
    return {"type": "object", "properties": props, "required": ["v", "type", *required]}


def _wire_commands(schema: dict[str, Any]) -> dict[str, Any]:
    """On the wire every command carries its ``id``, ``deadline_unix_s`` and ``kind`` (in code they have defaults)."""
    for variant in schema["$defs"].values():
        variant["required"] = sorted({*variant.get("required", []), *WIRE_REQUIRED})
    return schema


def schemas() -> dict[str, dict[str, Any]]:
    """Every message's JSON Schema, by file name."""
    out: dict[str, dict[str, Any]] = {
        "command.json": _wire_commands(COMMAND_ADAPTER.json_schema()),
        "ack.json": Ack.model_json_schema(),
        "capabilities.json": Capabilities.model_json_schema(),
        "frame_header.json": FrameHeader.model_json_schema(),
    }
    messages = {
        "hello": _envelope(
            "hello",
            {
                "client": {"type": "string"},
                "accepts": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": f"options the client accepts; known: {', '.join(CLIENT_OPTIONS)} "
                    "(an instrument ignores names it does not know)",
                },
            },
        ),
        "welcome": _envelope(
            "welcome",
            {
                "capabilities": {"$ref": "capabilities.json"},
                "heartbeat_s": {"type": "number"},
                "server_time_unix_s": {"type": "number"},
                "deadman_s": {"type": "number", "exclusiveMinimum": 0},
            },
            ("capabilities", "heartbeat_s"),
        ),
        "command": _envelope("command", {"command": {"$ref": "command.json"}}, ("command",)),
        "ack": _envelope("ack", {"ack": {"$ref": "ack.json"}}, ("ack",)),
        "frame": _envelope(
            "frame",
            {
                "header": {"$ref": "frame_header.json"},
                "delivery_seq": {"type": "integer", "minimum": 0},
                "ack": {"$ref": "ack.json"},
            },
            ("header", "delivery_seq"),
        ),
        "heartbeat": _envelope(
            "heartbeat",
            {"t": {"type": "number"}, "echo_t": {"type": "number"}, "held_s": {"type": "number", "minimum": 0}},
        ),
        "error": _envelope(
            "error",
            {"code": {"type": "string"}, "reason": {"type": "string"}, "command_id": {"type": ["string", "null"]}},
            ("code", "reason"),
        ),
        "bye": _envelope("bye"),
    }
    out["messages.json"] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"autoscope wire protocol v{PROTOCOL_VERSION}: first part of every message",
        "oneOf": [{"$ref": f"#/$defs/{k}"} for k in messages],
        "$defs": messages,
    }
    return out


def render(schema: dict[str, Any]) -> str:
    """Canonical text of a schema file."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema into ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in schemas().items():
        path = directory / name
        path.write_text(render(schema))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in export(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(p)
