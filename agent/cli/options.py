"""Options the subcommands share: long-option values, positions, and CURVE keys from certificate files."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def option_value(args: argparse.Namespace, flag: str) -> Any:
    """The parsed value of the long option ``flag`` (``--client-key`` is ``args.client_key``)."""
    return getattr(args, flag.lstrip("-").replace("-", "_"))


def position_nm(text: str) -> tuple[float, float]:
    """``X_NM,Y_NM`` as two finite floats (argparse type of ``--at``)."""
    parts = text.split(",")
    try:
        x, y = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not X_NM,Y_NM (two numbers, nm)") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise argparse.ArgumentTypeError(f"{text!r}: the position must be finite")
    return x, y


def timeout_s(text: str) -> float:
    """A timeout in seconds, positive and at most a day (argparse type; 1e300 overflowed the waits)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.0 < value <= 86_400.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a timeout is more than 0 and at most 86400 s (a day)")
    return value


def add_client_key_args(p: argparse.ArgumentParser, where: str) -> None:
    """``--client-key`` and ``--server-public``: CURVE keys for reaching a server that requires them."""
    p.add_argument(
        "--client-key", type=Path, default=None,
        help=f"{where}: this client's CURVE secret certificate (zmq.auth format; needs --server-public)",
    )  # fmt: skip
    p.add_argument(
        "--server-public", type=Path, default=None,
        help=f"{where}: the server's public CURVE certificate (needs --client-key)",
    )  # fmt: skip


def client_keys(args: argparse.Namespace) -> Any:
    """The :class:`~drivers.security.CurveClientKeys` of ``--client-key`` and ``--server-public``, or None.

    Raises
    ------
    ValueError
        One given without the other, or a certificate that is missing or holds no key (named).
    """
    why = "a CURVE client needs its own secret certificate and the server's public one"
    if not _both_or_neither(args, "--client-key", "--server-public", why):
        return None
    from drivers.security import CurveClientKeys

    public, secret = _certificate(args.client_key, "--client-key")
    if secret is None:
        raise ValueError(f"--client-key {args.client_key} holds no secret key (give the .key_secret certificate)")
    server_public, _ = _certificate(args.server_public, "--server-public")
    return CurveClientKeys(public, secret, server_public)


def server_keys(args: argparse.Namespace) -> Any:
    """The server's CURVE keys and allow-list, or None (then the server runs unauthenticated).

    Raises
    ------
    ValueError
        One of ``--server-key`` and ``--allow-clients`` without the other, or a bad certificate (named).
    """
    why = "a CURVE server needs its secret certificate and a directory of allowed client certificates"
    if not _both_or_neither(args, "--server-key", "--allow-clients", why):
        return None
    from drivers.security import load_server_keys

    _certificate(args.server_key, "--server-key")
    if not args.allow_clients.is_dir():
        raise ValueError(f"--allow-clients {args.allow_clients} is not a directory of client public certificates")
    try:
        return load_server_keys(args.server_key, args.allow_clients)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--server-key {args.server_key}, --allow-clients {args.allow_clients}: {exc}") from None


def _both_or_neither(args: argparse.Namespace, first: str, second: str, why: str) -> bool:
    """True when both options are given, False when neither.

    Raises
    ------
    ValueError
        Only one is given (it is named, with ``why``).
    """
    a, b = (option_value(args, flag) is not None for flag in (first, second))
    if a != b:
        given, missing = (first, second) if a else (second, first)
        raise ValueError(f"{given} needs {missing}: {why}")
    return a


def _certificate(path: Path, flag: str) -> tuple[bytes, bytes | None]:
    """The (public, secret) keys of a zmq.auth certificate file.

    Raises
    ------
    ValueError
        A missing file, a directory, or a file that holds no key (named with its option).
    """
    import zmq.auth

    if not path.is_file():
        raise ValueError(f"{flag} {path}: {'a directory' if path.is_dir() else 'no such file'}, not a certificate")
    try:
        return zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{flag} {path} is not a CURVE certificate: {exc}") from None


def make_keys(directory: Path) -> int:
    """Write CURVE certificates for a server and one client into ``directory`` (``clients/``: the allow-list)."""
    import zmq.auth

    names = ["server.key", "server.key_secret", "client.key", "client.key_secret", "clients/client.key"]
    existing = [str(directory / n) for n in names if (directory / n).exists()]
    if existing:  # (new keys would lock out every client holding the old server key, silently)
        raise ValueError(f"{directory} already holds keys ({', '.join(existing)}): give another directory")
    (directory / "clients").mkdir(parents=True, exist_ok=True)
    umask = os.umask(0o077)  # the secrets are their owner's alone from the moment they exist
    try:
        server_public, server_secret = zmq.auth.create_certificates(str(directory), "server")
        client_public, client_secret = zmq.auth.create_certificates(str(directory), "client")
    finally:
        os.umask(umask)
    for public in (server_public, client_public):
        os.chmod(public, 0o644)  # (public keys are for handing out)
    Path(client_public).replace(directory / "clients" / Path(client_public).name)
    print(
        f"server: {server_secret} (keep private), {server_public}\nclient: {client_secret} (keep private), "
        f"{directory / 'clients' / Path(client_public).name} (allow-list)"
    )
    return 0


def check_output_file(path: Path | None, flag: str, keep: Iterable[Path] = ()) -> None:
    """Refuse, before any work, an output file that could not be written or would destroy what must be kept.

    ``keep``: files the command reads or records into (a session log, an input image), existing or not
    yet: the output may not be one of them, under any name (a hard link included).

    Raises
    ------
    ValueError
        ``path`` is a directory, one of its parents is a file, or it is one of ``keep`` (named with ``flag``).
    """
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory: give a file name")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{flag} {path}: {blocking} is a file, not a directory")
    for kept in keep:
        if same_file(path, kept):
            raise ValueError(f"{flag} {path} would overwrite {kept}: choose another name")


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved path (existing or not), or one file linked twice."""
    if a.resolve() == b.resolve():
        return True
    return a.is_file() and b.is_file() and os.path.samefile(a, b)


def png_output(png: Path | None, flag: str = "--png") -> Path | None:
    """The PNG file ``flag`` names, checked before any work; any suffix but ``.png`` is refused.

    ``.png`` is added when the name has no suffix, as matplotlib would add it: the checks then see the
    file that will be written.

    Raises
    ------
    ValueError
        Another suffix, a directory, or a name under a file.
    """
    if png is None:
        return None
    if not png.suffix:
        png = png.with_name(png.name + ".png")
    if png.suffix.lower() != ".png":
        raise ValueError(f"{flag} {png}: the picture is a PNG image; give a name ending in .png")
    check_output_file(png, flag)
    return png
