"""Wire encoding of autoscope messages: JSON envelopes, frames as [JSON header, raw buffer].

Every message is a ZeroMQ multipart message whose first part is a UTF-8 JSON
object ``{"v": PROTOCOL_VERSION, "type": ..., ...}``.  A frame adds a second
part holding the image's bytes, C order, in the dtype and shape its header
names.  Decoding checks everything and raises :class:`ProtocolError` with a
specific code; nothing is ever unpickled.

Error codes: ``parts`` (wrong number of parts), ``json`` (not UTF-8 JSON, or
NaN/Infinity tokens), ``envelope`` (not an object, missing fields), ``version``,
``type`` (unknown message type), ``invalid`` (a field fails validation, including
unknown command kinds), ``shape_mismatch`` (header and buffer disagree),
``too_large`` (a frame above the receiver's limit).
"""

from __future__ import annotations

import json
import math
from typing import Any, get_args

import numpy as np
from pydantic import ValidationError

from drivers.base import (
    COMMAND_ADAPTER,
    PROTOCOL_VERSION,
    Ack,
    Capabilities,
    Command,
    Frame,
    FrameHeader,
    ProtocolError,
    numpy_dtype,
)

MESSAGE_TYPES = ("hello", "welcome", "command", "ack", "frame", "heartbeat", "error", "bye")
#: Options a client may name in its hello's ``accepts`` list: ``ack_in_frame`` lets the server put a scan's
#: ack into the frame message when the frame is ready as the ack goes out (one message instead of two).
ACK_IN_FRAME = "ack_in_frame"
CLIENT_OPTIONS = (ACK_IN_FRAME,)
MIN_KEEPALIVE_S = 0.05  # a client never heartbeats more often than this, whatever a server asks
#: The slowest server heartbeat a client waits on: a server announcing a slower one (or a bridge with a bad
#: value) is declared gone after three of these all the same, not after hours of silence.
MAX_SERVER_HEARTBEAT_S = 30.0


def finite_number(value: Any) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, float | int):
        return None
    try:
        number = float(value)
    except OverflowError:  # a JSON integer of hundreds of digits: no float (it ended the client's I/O thread)
        return None
    return number if math.isfinite(number) else None


def _reject_constant(token: str) -> float:
    raise ValueError(f"non-finite number {token} is not allowed")


# Built once (both are stateless): json.dumps and json.loads with options build new ones on every call.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _dumps(obj: dict[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode()


def envelope(kind: str, **fields: Any) -> bytes:
    """Encode a one-part message of type ``kind``."""
    return _dumps({"v": PROTOCOL_VERSION, "type": kind, **fields})


def _envelope_of(kind: str, model: Command | Ack) -> bytes:
    """A one-part message of type ``kind`` whose field ``kind`` is ``model``, serialised by pydantic.

    For models without free-form fields only: their numbers are validated finite, so nothing the JSON
    encoder would refuse can be in them (and pydantic's serialiser is several times faster than
    building a dict and encoding it).
    """
    return b'{"v":%d,"type":"%s","%s":%s}' % (
        PROTOCOL_VERSION,
        kind.encode(),
        kind.encode(),
        model.__pydantic_serializer__.to_json(model),
    )


def encode_command(command: Command) -> list[bytes]:
    """A command message."""
    return [_envelope_of("command", command)]


def encode_ack(ack: Ack) -> list[bytes]:
    """An ack message."""
    return [_envelope_of("ack", ack)]


def encode_welcome(
    cap: Capabilities, heartbeat_s: float, server_time_unix_s: float, deadman_s: float | None = None
) -> list[bytes]:
    """The server's answer to ``hello``; ``deadman_s`` when its dead-man timer is on."""
    extra = {} if deadman_s is None else {"deadman_s": deadman_s}
    return [
        envelope(
            "welcome",
            capabilities=cap.model_dump(mode="json"),
            heartbeat_s=heartbeat_s,
            server_time_unix_s=server_time_unix_s,
            **extra,
        )
    ]


def keepalive_s(welcome: dict[str, Any], heartbeat_s: float) -> float:
    """How often a client must send while idle.

    The shortest of its ``heartbeat_s``, the server's ``heartbeat_s`` and a quarter of the server's
    dead-man time.  The server forgets a client silent for three of its own heartbeats, so a client beating slower
    than the server would be forgotten between its beats.  With one heartbeat lost on the way, the
    next still reaches the server well inside its dead-man time.  Missing or invalid values (an older
    bridge) are left out, and no server value makes the client send more often than every
    ``MIN_KEEPALIVE_S``.
    """
    out = heartbeat_s
    for value, share in ((welcome.get("heartbeat_s"), 1.0), (welcome.get("deadman_s"), 0.25)):
        number = finite_number(value)
        if number is not None and number > 0:
            out = min(out, max(number * share, MIN_KEEPALIVE_S))
    return out


def liveness_s(welcome: dict[str, Any], heartbeat_s: float) -> float:
    """How long a client hears nothing before it declares the server gone.

    Three of the slower of the two heartbeats: a server beating every 5 s is not dead after three of a
    client's 1 s beats.  The server's counts up to ``MAX_SERVER_HEARTBEAT_S`` only.
    """
    server = finite_number(welcome.get("heartbeat_s"))
    server = min(server, MAX_SERVER_HEARTBEAT_S) if server is not None and server > 0 else 0.0
    return 3 * max(heartbeat_s, server)


def client_options(hello: dict[str, Any]) -> frozenset[str]:
    """The options of ``CLIENT_OPTIONS`` a ``hello`` asks for (names this side does not know are ignored).

    Raises
    ------
    ProtocolError
        ``invalid``: ``accepts`` is not a list of strings.
    """
    accepts = hello.get("accepts", [])
    if not isinstance(accepts, list) or not all(isinstance(name, str) for name in accepts):
        raise ProtocolError("invalid", "hello.accepts must be a list of option names")
    return frozenset(accepts).intersection(CLIENT_OPTIONS)


def encode_error(code: str, reason: str, command_id: str | None = None) -> list[bytes]:
    """An error reply naming what was wrong."""
    return [envelope("error", code=code, reason=reason[:2000], command_id=command_id)]


def encode_frame(frame: Frame, delivery_seq: int, ack: Ack | None = None) -> list[Any]:
    """A frame: [envelope with header, image buffer]; the buffer is passed without a copy.

    ``ack``: the ack of the scan this frame answers, carried in the same message (``ack_in_frame``).
    """
    image = np.ascontiguousarray(frame.image)
    # pydantic's serialiser: several times faster than a dict through json; the header's own numbers are
    # validated finite, and a non-finite number in its free-form metadata goes out as null.
    try:
        header = frame.header.__pydantic_serializer__.to_json(frame.header)
    except ValueError:  # e.g. a lone surrogate in metadata (a file name decoded with surrogateescape), which
        header = _dumps(frame.header.model_dump(mode="json"))  # the json module escapes, as JSON allows
    extra = b"" if ack is None else b',"ack":' + ack.__pydantic_serializer__.to_json(ack)
    head = b'{"v":%d,"type":"frame","header":%s,"delivery_seq":%d%s}' % (PROTOCOL_VERSION, header, delivery_seq, extra)
    return [head, image.data.cast("B")]


def decode_envelope(parts: list[bytes]) -> dict[str, Any]:
    """Parse and check the first part of a message.

    Raises
    ------
    ProtocolError
        ``parts``, ``json``, ``envelope``, ``version`` or ``type``.
    """
    if not parts or len(parts) > 2:
        raise ProtocolError("parts", f"expected 1 or 2 message parts, got {len(parts)}")
    try:
        obj = _DECODER.decode(bytes(parts[0]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("json", f"first part is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("json", "first part nests too deeply to parse") from None
    if not isinstance(obj, dict) or "v" not in obj or "type" not in obj:
        raise ProtocolError("envelope", "message must be a JSON object with 'v' and 'type'")
    if type(obj["v"]) is not int or obj["v"] != PROTOCOL_VERSION:  # (not true, 1.0 or "1")
        raise ProtocolError(
            "version", f"protocol version {obj['v']!r} is not supported (this side speaks {PROTOCOL_VERSION})"
        )
    if obj["type"] not in MESSAGE_TYPES:
        raise ProtocolError("type", f"unknown message type {obj['type']!r}")
    expected = 2 if obj["type"] == "frame" else 1
    if len(parts) != expected:
        raise ProtocolError("parts", f"a {obj['type']!r} message has {expected} part(s), got {len(parts)}")
    return obj


def _validated(factory: Any, data: Any, what: str) -> Any:
    try:
        return factory(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProtocolError("invalid", f"invalid {what}: {where}: {first['msg']}") from None


#: Fields every command must carry on the wire (in code they have defaults).
WIRE_REQUIRED = ("id", "deadline_unix_s", "kind")
#: Integer fields of the commands (pixel counts).
_INTEGER_FIELDS = frozenset(
    name for model in get_args(get_args(Command)[0]) for name, f in model.model_fields.items() if f.annotation is int
)


def _integral_float(value: Any) -> bool:
    return type(value) is float and value.is_integer()


def decode_command(obj: dict[str, Any]) -> Command:
    """The command inside a ``command`` envelope (unknown kinds and bad fields are ``invalid``).

    Strict, as the published schema: a number sent as a string or ``true`` as a count is refused, not
    coerced; and the ``id``, ``deadline_unix_s`` and ``kind`` every command carries on the wire are required
    (a command without an id would be acked under one the sender cannot match).
    """
    command = obj.get("command")
    if isinstance(command, dict):
        missing = [name for name in WIRE_REQUIRED if name not in command]
        if missing:
            raise ProtocolError("invalid", f"invalid command: {', '.join(missing)} missing (required on the wire)")
        # JSON Schema's "integer" takes 512.0 (a writer that emits doubles): so does this side, not 512.5.
        command = {k: int(v) if k in _INTEGER_FIELDS and _integral_float(v) else v for k, v in command.items()}
    return _validated(lambda data: COMMAND_ADAPTER.validate_python(data, strict=True), command, "command")


def decode_ack(obj: dict[str, Any]) -> Ack:
    """The ack inside an ``ack`` envelope."""
    return _validated(Ack.model_validate, obj.get("ack"), "ack")


def decode_capabilities(obj: dict[str, Any]) -> Capabilities:
    """The capabilities inside a ``welcome`` envelope."""
    return _validated(Capabilities.model_validate, obj.get("capabilities"), "capabilities")


def decode_frame(obj: dict[str, Any], buffer: bytes | memoryview, max_bytes: int) -> tuple[Frame, int]:
    """The frame of a ``frame`` message and its delivery sequence number.

    Raises
    ------
    ProtocolError
        ``invalid`` header, ``too_large`` above ``max_bytes``, ``shape_mismatch`` buffer.
    """
    header: FrameHeader = _validated(FrameHeader.model_validate, obj.get("header"), "frame header")
    seq = obj.get("delivery_seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError("invalid", "frame delivery_seq must be a non-negative integer")
    nbytes = header.nbytes
    if nbytes > max_bytes:
        raise ProtocolError("too_large", f"frame of {nbytes} bytes exceeds the limit of {max_bytes}")
    size = memoryview(buffer).nbytes
    if size != nbytes:
        raise ProtocolError(
            "shape_mismatch", f"buffer holds {size} bytes, header {header.shape} {header.dtype} needs {nbytes}"
        )
    return Frame(header, np.frombuffer(buffer, dtype=numpy_dtype(header.dtype)).reshape(header.shape)), seq
