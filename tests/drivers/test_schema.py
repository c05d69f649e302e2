"""The committed JSON Schemas match the code, and real messages validate against them."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from drivers.base import Ack, BlankCommand, Frame, ScanCommand
from drivers.codec import encode_ack, encode_command, encode_error, encode_frame, encode_welcome, envelope
from drivers.memory import DEFAULT_CAPABILITIES
from drivers.schema import SCHEMA_DIR, render, schemas


@pytest.mark.parametrize("name", sorted(schemas()))
def test_committed_schema_matches_the_code(name):
    path = SCHEMA_DIR / name
    assert path.exists(), f"{path} missing: run python -m drivers.schema"
    assert path.read_text() == render(schemas()[name]), f"{name} drifted from the code: run python -m drivers.schema"


def _validator() -> jsonschema.Draft202012Validator:
    files = {p.name: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.json")}
    resources = [(name, Resource.from_contents(s, default_specification=DRAFT202012)) for name, s in files.items()]
    return jsonschema.Draft202012Validator(files["messages.json"], registry=Registry().with_resources(resources))


def test_every_message_validates_against_the_schema():
    frame = Frame.of(np.zeros((2, 2), np.uint16), 0.5)
    messages = [
        envelope("hello", client="x"),
        encode_welcome(DEFAULT_CAPABILITIES, 1.0, 2.0)[0],
        encode_command(ScanCommand(x_nm=1, y_nm=2, fov_nm=3, rows=4, cols=5, dwell_us=6))[0],
        encode_command(BlankCommand())[0],
        encode_ack(Ack(command_id="a", kind="scan", accepted=True))[0],
        encode_frame(frame, 0)[0],
        envelope("heartbeat", t=1.0),
        encode_error("json", "bad")[0],
        envelope("bye"),
    ]
    validator = _validator()
    for raw in messages:
        validator.validate(json.loads(raw))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"v": 2, "type": "hello"})
    bad = json.loads(messages[2])
    bad["command"]["fov_nm"] = -1
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)
