"""The instrument server as a Nion Swift plug-in: how an agent reaches a real Nion microscope.

On a Nion microscope the hardware (STEM controller, scan device) is registered inside the running Nion
Swift process; nothing outside it can reach it.  Swift loads plug-ins at start-up: every package under
the ``nionswift_plugin`` namespace on its ``sys.path`` and every folder in ``<Swift data>/PlugIns/``.
It instantiates each module-level class named ``...Extension`` that has an ``extension_id`` (passing an
``api_broker``) and calls its ``close()`` at shutdown.  So: install autoscope into Swift's Python
environment and create ``PlugIns/autoscope_server/__init__.py`` holding one line::

    from drivers.nion_plugin import AutoscopeServerExtension  # noqa: F401

At start-up :class:`AutoscopeServerExtension` waits (on its own thread) for the STEM controller and
the scan device to register, then serves them with :class:`~drivers.server.InstrumentServer` around a
:class:`~drivers.nion.NionDriver`, configured by the TOML file named in ``AUTOSCOPE_NION_CONFIG``
(default ``~/.autoscope/nion.toml``; see :class:`PluginConfig`).  Closing Swift blanks the beam and
stops the server.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.nion import NionDriver, NionLimits

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("~/.autoscope/nion.toml")


class PluginConfig(BaseModel):
    """Settings of the server inside Swift (a TOML file; unknown keys are refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    bind: str = Field("tcp://127.0.0.1:5555", description="Command endpoint; off loopback CURVE keys are required.")
    pub: str | None = Field(None, description="Optional endpoint streaming every frame to observers.")
    scan_device: str = Field("superscan", description="Hardware source id of the scan device.")
    positioner: Literal["scan", "stage"] = "scan"
    channel: int = Field(0, ge=0, description="Detector channel (0: HAADF).")
    heartbeat_s: float = Field(1.0, gt=0.0)
    deadman_s: float = Field(2.0, gt=0.0)
    server_key: Path | None = Field(None, description="Server CURVE secret certificate (zmq.auth format).")
    allow_clients: Path | None = Field(None, description="Folder of allowed client public certificates.")
    hardware_wait_s: float = Field(120.0, gt=0.0, description="How long to wait for the hardware to register.")
    limits: NionLimits = NionLimits()


def load_plugin_config(path: Path | None = None) -> PluginConfig:
    """The configuration at ``path`` (or ``$AUTOSCOPE_NION_CONFIG``, or the default file).

    Defaults only when the default file is absent: a file named explicitly (argument or environment)
    that does not exist is an error, since running on the built-in limits would go unnoticed.
    """
    named = path or os.environ.get("AUTOSCOPE_NION_CONFIG")
    path = Path(named or DEFAULT_CONFIG).expanduser()
    if not path.is_file():
        if named:
            raise FileNotFoundError(f"the Nion plug-in configuration {path} does not exist (AUTOSCOPE_NION_CONFIG?)")
        return PluginConfig()
    return PluginConfig.model_validate(tomllib.loads(path.read_text()))


def find_hardware(scan_device: str) -> tuple[Any, Any] | None:
    """The registered STEM controller and scan hardware source, or None while either is missing."""
    from nion.instrumentation import HardwareSource
    from nion.utils import Registry

    stem = Registry.get_component("stem_controller")
    scan = HardwareSource.HardwareSourceManager().get_hardware_source_for_hardware_source_id(scan_device)
    return (stem, scan) if stem is not None and scan is not None else None


class AutoscopeServerExtension:
    """Swift instantiates this at start-up and closes it at shutdown (see the module's docstring)."""

    extension_id = "autoscope.instrument_server"

    def __init__(self, api_broker: Any = None, config: PluginConfig | None = None) -> None:
        self.server: Any = None
        self.driver: NionDriver | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._start_when_ready, name="autoscope-plugin", daemon=True)
        try:
            self.config: PluginConfig | None = config or load_plugin_config()
        except (OSError, ValueError) as exc:  # Swift must start whatever the file says: log and say why
            self.config, self.error = None, f"configuration: {type(exc).__name__}: {exc}"
            logger.error("autoscope server not started: %s", self.error)
        self._thread.start()

    def _start_when_ready(self) -> None:
        from drivers.security import load_server_keys
        from drivers.server import InstrumentServer

        c = self.config
        if c is None:
            return
        deadline = time.monotonic() + c.hardware_wait_s
        while (found := find_hardware(c.scan_device)) is None:
            if self._stop.wait(0.5) or time.monotonic() > deadline:
                self.error = (
                    f"no STEM controller and scan device {c.scan_device!r} registered within {c.hardware_wait_s} s"
                )
                logger.error("autoscope server not started: %s", self.error)
                return
        stem, scan = found
        try:
            self.driver = NionDriver(stem, scan, c.limits, c.positioner, c.channel)
            keys = load_server_keys(c.server_key, c.allow_clients) if c.server_key else None
            self.server = InstrumentServer(
                self.driver, c.bind, c.pub, heartbeat_s=c.heartbeat_s, deadman_s=c.deadman_s, curve=keys
            ).start()
        except Exception as exc:  # Swift must keep running whatever happens here: log and say why
            self.error = f"{type(exc).__name__}: {exc}"
            logger.exception("autoscope server not started")
            return
        logger.info("autoscope instrument server on %s (scan device %s)", self.server.endpoint, c.scan_device)

    def wait_started(self, timeout_s: float) -> bool:
        """True once the server runs (for tests and status displays)."""
        self._thread.join(timeout_s)
        return self.server is not None

    def close(self) -> None:
        """Stop serving and blank the beam (Swift calls this at shutdown)."""
        self._stop.set()
        self._thread.join(5.0)
        if self.server is not None:
            self.server.stop()
        if self.driver is not None:
            self.driver.close()
