"""Where a server may bind, and CURVE authentication with an allow-list of client keys."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


@dataclass(frozen=True)
class CurveServerKeys:
    """The server's CURVE key pair (Z85 bytes) and the public keys of the clients allowed in."""

    public: bytes
    secret: bytes
    allowed_clients: frozenset[bytes] = field(default_factory=frozenset)


@dataclass(frozen=True)
class CurveClientKeys:
    """A client's CURVE key pair and the server's public key (Z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh CURVE (public, secret) key pair, Z85-encoded."""
    return zmq.curve_keypair()


def is_loopback(endpoint: str) -> bool:
    """True for ``inproc://``, ``ipc://`` and TCP endpoints on 127.0.0.0/8, ::1 or localhost."""
    if endpoint.startswith(("inproc://", "ipc://")):
        return True
    host = urlparse(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(endpoint: str, curve: CurveServerKeys | None, insecure: bool) -> None:
    """Refuse to bind a non-loopback endpoint without CURVE keys unless ``insecure`` is explicit.

    Raises
    ------
    ValueError
        With the endpoint and what to do about it.
    """
    if not is_loopback(endpoint) and curve is None and not insecure:
        raise ValueError(
            f"refusing to bind {endpoint} without authentication: give CURVE server keys with an allow-list "
            "of client public keys, bind to 127.0.0.1, or pass insecure=True (--insecure) explicitly"
        )


class _AllowList:
    def __init__(self, allowed: frozenset[bytes]) -> None:
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        return zmq.utils.z85.encode(key) in self.allowed or key in self.allowed


def start_authenticator(context: zmq.Context[zmq.Socket[bytes]], keys: CurveServerKeys) -> ThreadAuthenticator:
    """Start ZAP authentication that admits only the allowed client keys."""
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(keys.allowed_clients))
    return auth


def apply_server_keys(socket: zmq.Socket[bytes], keys: CurveServerKeys) -> None:
    """Make ``socket`` a CURVE server (before bind)."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def apply_client_keys(socket: zmq.Socket[bytes], keys: CurveClientKeys) -> None:
    """Make ``socket`` a CURVE client of the server whose public key it knows (before connect)."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.server_public


def load_server_keys(server_key: Path, allow_clients: Path | None) -> CurveServerKeys:
    """Server keys from a zmq.auth secret certificate and a folder of allowed client public certificates.

    Raises
    ------
    ValueError
        The certificate holds no secret key, or no client is allowed.
    """
    public, secret = zmq.auth.load_certificate(str(server_key))
    if secret is None:
        raise ValueError(f"{server_key} holds no secret key")
    allowed: frozenset[bytes] = frozenset()
    if allow_clients is not None:
        allowed = frozenset(zmq.auth.load_certificate(str(f))[0] for f in sorted(Path(allow_clients).glob("*.key")))
    if not allowed:
        raise ValueError("a server key needs an allow-list with at least one client public certificate")
    return CurveServerKeys(public, secret, allowed)
