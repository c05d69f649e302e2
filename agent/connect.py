"""Connecting to an instrument server, with a hint where a CURVE server may be what refused."""

from __future__ import annotations

from typing import Any

from drivers.base import Disconnected
from drivers.remote import RemoteDriver
from drivers.security import CurveClientKeys

_CURVE_HINT = "a server that requires CURVE keys answers no client without them (--client-key, --server-public)"


def connect_remote(endpoint: str, curve: CurveClientKeys | None = None, **options: Any) -> RemoteDriver:
    """A :class:`RemoteDriver` connected to ``endpoint`` (``options`` go to it).

    Raises
    ------
    Disconnected
        No server answered; without keys, the message adds that a CURVE server would not answer either.
    """
    try:
        return RemoteDriver(endpoint, curve=curve, **options)
    except Disconnected as exc:
        if curve is not None:
            raise
        raise Disconnected(f"{exc}; {_CURVE_HINT}") from None
