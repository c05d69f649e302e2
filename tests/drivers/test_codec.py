"""The wire codec: round trips for every message, and fuzzing that only ever raises ProtocolError."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import COMMAND_ADAPTER, Ack, Frame, FrameHeader, ProtocolError, ScanCommand, SetTiltCommand
from drivers.codec import (
    decode_ack,
    decode_capabilities,
    decode_command,
    decode_envelope,
    decode_frame,
    encode_ack,
    encode_command,
    encode_frame,
    encode_welcome,
    keepalive_s,
    liveness_s,
)
from drivers.memory import DEFAULT_CAPABILITIES

finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    x=st.floats(-1e6, 1e6),
    y=st.floats(-1e6, 1e6),
    fov=st.floats(1e-3, 1e5),
    rows=st.integers(1, 16384),
    cols=st.integers(1, 16384),
    dwell=st.floats(1e-3, 1e6),
    rot=st.floats(-360, 360),
)
def test_scan_commands_round_trip(x, y, fov, rows, cols, dwell, rot):
    cmd = ScanCommand(x_nm=x, y_nm=y, fov_nm=fov, rows=rows, cols=cols, dwell_us=dwell, rotation_deg=rot)
    assert decode_command(decode_envelope(encode_command(cmd))) == cmd


@settings(max_examples=100, deadline=None)
@given(tilt=st.floats(-90, 90))
def test_tilt_commands_round_trip(tilt):
    cmd = SetTiltCommand(tilt_deg=tilt)
    assert decode_command(decode_envelope(encode_command(cmd))) == cmd


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=4))
def test_random_bytes_only_ever_raise_protocol_errors(parts):
    try:
        obj = decode_envelope(parts)
        if obj["type"] == "command":
            decode_command(obj)
        elif obj["type"] == "frame":
            decode_frame(obj, parts[1], 1 << 20)
    except ProtocolError as exc:
        assert exc.code in ("parts", "json", "envelope", "version", "type", "invalid", "shape_mismatch", "too_large")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(["id", "deadline_unix_s", "kind", "x_nm", "fov_nm", "rows", "dwell_us", "rotation_deg"]),
    value=json_values,
)
def test_mutated_command_fields_are_validated(field, value):
    good = ScanCommand(x_nm=0, y_nm=0, fov_nm=1, rows=8, cols=8, dwell_us=1).model_dump(mode="json")
    obj = {"v": 1, "type": "command", "command": {**good, field: value}}
    try:
        cmd = decode_command(decode_envelope([json.dumps(obj).encode()]))
    except ProtocolError as exc:
        assert exc.code == "invalid"
    else:  # accepted values are within every declared bound
        COMMAND_ADAPTER.validate_python(cmd.model_dump())


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    dtype=st.sampled_from(["uint8", "uint16", "int16", "int32", "float32", "float64"]),
)
def test_frames_round_trip_bit_for_bit(rows, cols, dtype):
    image = (np.arange(rows * cols) % 200).reshape(rows, cols).astype(dtype)
    header = FrameHeader(
        sequence=3,
        command_id="abc",
        acquisition_start_unix_s=1,
        acquisition_end_unix_s=2,
        x_nm=1,
        y_nm=2,
        fov_nm=3,
        shape=(rows, cols),
        dtype=dtype,
        pixel_size_nm=0.1,
        dwell_us=1,
        metadata={"k": [1, 2]},
    )
    head, buf = encode_frame(Frame(header, image), 7)
    frame, seq = decode_frame(decode_envelope([head, bytes(buf)]), bytes(buf), 1 << 20)
    assert seq == 7 and frame.header == header
    np.testing.assert_array_equal(frame.image, image)


def test_a_non_finite_number_in_frame_metadata_goes_out_as_null_and_the_frame_still_goes():
    """Free-form metadata (a vendor's, say) may hold NaN; JSON may not: the frame is sent, the value as null."""
    frame = Frame.of(np.zeros((8, 8), np.float32), 0.1, metadata={"defocus_nm": float("nan"), "ok": 1.5})
    head, buf = encode_frame(frame, 0, ack=Ack(command_id="x1", kind="scan", accepted=True))
    obj = decode_envelope([head, bytes(buf)])
    decoded, _ = decode_frame(obj, bytes(buf), 1 << 20)
    assert decoded.header.metadata == {"defocus_nm": None, "ok": 1.5} and obj["ack"]["command_id"] == "x1"


def test_a_lone_surrogate_in_frame_metadata_is_escaped_not_fatal():
    name = b"scan-\x80.dm4".decode("utf-8", "surrogateescape")  # an undecodable file name, kept as it was
    frame = Frame.of(np.zeros((8, 8), np.float32), 0.1, metadata={"file": name})
    head, buf = encode_frame(frame, 0)
    decoded, _ = decode_frame(decode_envelope([head, bytes(buf)]), bytes(buf), 1 << 20)
    assert decoded.header.metadata == {"file": name}


def test_ack_and_welcome_round_trip():
    ack = Ack(command_id="x1", kind="scan", accepted=False, code="refused", reason="out of range")
    assert decode_ack(decode_envelope(encode_ack(ack))) == ack
    assert decode_capabilities(decode_envelope(encode_welcome(DEFAULT_CAPABILITIES, 1.0, 5.0))) == DEFAULT_CAPABILITIES


@pytest.mark.parametrize(
    ("deadman_s", "expected_s"),
    [(2.0, 0.5), (8.0, 1.0), (0.1, 0.05), (None, 1.0), (0, 1.0), (-2.0, 1.0), (True, 1.0), ("2", 1.0)],
)
def test_a_client_sends_at_least_every_quarter_of_the_servers_dead_man_time(deadman_s, expected_s):
    welcome = decode_envelope(encode_welcome(DEFAULT_CAPABILITIES, 1.0, 5.0, None))
    if deadman_s is not None:
        welcome["deadman_s"] = deadman_s
    assert keepalive_s(welcome, 1.0) == pytest.approx(expected_s)
    assert keepalive_s({"deadman_s": float("nan")}, 1.0) == keepalive_s({"deadman_s": float("inf")}, 1.0) == 1.0


def test_frame_image_must_match_its_header():
    header = Frame.of(np.zeros((4, 4), np.float32), 0.25).header
    with pytest.raises(ProtocolError, match="shape_mismatch"):
        Frame(header, np.zeros((4, 5), np.float32))
    with pytest.raises(ProtocolError, match="shape_mismatch"):
        Frame(header, np.zeros((4, 4), np.float64))


def test_an_integral_double_is_an_integer_as_json_schema_says():
    """A bridge whose JSON writer emits doubles sends 512.0 for 512: the schema's "integer" accepts it."""
    from drivers.base import ScanCommand
    from drivers.codec import decode_command

    wire = ScanCommand(x_nm=0, y_nm=0, fov_nm=4, rows=32, cols=32, dwell_us=1).model_dump(mode="json")
    command = decode_command({"command": wire | {"rows": 512.0, "cols": 256.0}})
    assert (command.rows, command.cols) == (512, 256) and type(command.rows) is int


@pytest.mark.parametrize(
    ("server_heartbeat_s", "expected_s"),
    [(0.5, 3.0), (5.0, 15.0), (30.0, 90.0), (1e6, 90.0), (float("inf"), 3.0), (None, 3.0), (-1.0, 3.0)],
)
def test_a_client_waits_three_of_the_slower_heartbeats_but_not_longer_than_three_of_the_bound(
    server_heartbeat_s, expected_s
):
    welcome = {} if server_heartbeat_s is None else {"heartbeat_s": server_heartbeat_s}
    assert liveness_s(welcome, 1.0) == pytest.approx(expected_s)
