"""The loop's instrument link: a lost connection waited for, a re-established one read back before any move."""

from __future__ import annotations

import time
from typing import Any

from agent.loop_base import InFlight, _LoopBase
from agent.run_state import StopLoop
from drivers.base import Capabilities, CommandRefused, Disconnected, DriverError


class UntrustedReplayClaim(ValueError):
    """A driver claims to serve recorded fields and the loop was not told to trust it."""


class _LinkRecovery(_LoopBase):
    """Losing the instrument and getting it back (see :mod:`agent.loop_base` for the layers)."""

    def _instrument_lost(self, exc: Exception) -> None:
        """Wait for a reconnecting driver to come back; stop once it has been gone for the grace period.

        The grace runs from the first failure of a streak, not from each: a driver may still report
        itself connected for a few heartbeats after its peer died, and every send meanwhile fails.
        """
        self._error("disconnected", str(exc))
        self._forget_in_flight("the link was lost")
        now = time.monotonic()
        self._lost_since = self._lost_since or now
        deadline = self._lost_since + self.config.reconnect_grace_s
        connected = getattr(self.driver, "connected", None)
        while connected is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # let a dying connection be noticed before trusting `connected`
            if self.driver.connected and self._resume():  # type: ignore[attr-defined]
                self._seen_generation = self._link_generation()
                return
        raise StopLoop("failed", f"instrument lost: {exc}")

    def _forget_in_flight(self, why: str, waiting: InFlight | None = None) -> None:
        """Forget the scans in flight on a lost link, and the one ``waiting`` for its frame: recorded, counted."""
        lost = [*([waiting] if waiting else []), *self._in_flight]
        self._in_flight.clear()
        if lost:
            steps = ", ".join(str(j.step) for j in lost)
            self._error("frames_lost_with_link", f"{why}: the frames of step(s) {steps} will not come")
            self.state.frames_lost_with_link += len(lost)

    def _driver_stats(self) -> dict[str, Any]:
        """The driver's own counters, if it keeps any (the remote driver does)."""
        stats = getattr(self.driver, "stats", None)
        return dict(stats) if isinstance(stats, dict) else {}

    def _link_generation(self) -> int:
        """How many times the driver has reconnected (0 for drivers that never do)."""
        return int(self._driver_stats().get("reconnects", 0))

    def _check_link(self) -> None:
        """A reconnection the loop did not see (it happened while waiting for a frame) is resumed first.

        No move may follow a reconnection before the instrument's state is read back and the beam
        unblanked; the scans in flight on the old connection will not answer.
        """
        generation = self._link_generation()
        if generation == self._seen_generation:
            return
        self._seen_generation = generation
        self._error("reconnected", "the instrument connection was re-established since the last command")
        self._forget_in_flight("the link was re-established")
        if not self._resume():  # lost again meanwhile: wait for it as for any loss
            self._instrument_lost(Disconnected("the instrument was lost again while its state was read back"))

    def _resume(self) -> bool:
        """After a reconnection: read the instrument's state back and unblank before any move.

        The instrument may have restarted (the guard takes its limits again: narrower than the
        configuration's means a safe hold), or its dead-man timer blanked the beam meanwhile.  False
        if the connection failed again meanwhile.
        """
        try:
            capabilities = self.driver.capabilities()
            self._replaying = self._replay_claim(capabilities)
            beyond = self.guard.refresh(capabilities)
            if beyond:
                raise StopLoop("held", "safe hold: the reconnected instrument's limits are narrower than the "
                               f"configuration's: {'; '.join(beyond)}")  # fmt: skip
            unblank = self._unblank_command()
            self.recorder.command(unblank, self.state.issued)
            self.recorder.ack(self._send_counted(unblank, self.config.command_timeout_s), self.state.issued)
        except CommandRefused as exc:
            raise StopLoop("held", f"safe hold: the reconnected instrument refused to unblank: {exc}") from None
        except UntrustedReplayClaim as exc:
            raise StopLoop("held", f"safe hold: the reconnected instrument {exc}") from None
        except DriverError:
            return False
        self.recorder.write("reconnected", capabilities=capabilities.model_dump(mode="json"))
        return True

    def _replay_claim(self, capabilities: Capabilities | None) -> bool:
        """Whether the driver serves recorded fields (a strict replay), whose readback and age go unchecked.

        Raises
        ------
        UntrustedReplayClaim
            The driver claims it but ``config.trust_recorded_fields`` is not set: a live instrument
            whose bridge said so would have its frames' positions taken on trust.
        """
        claimed = capabilities is not None and capabilities.serves_recorded_fields
        if claimed and not self.config.trust_recorded_fields:
            raise UntrustedReplayClaim(
                "says it is a strict replay (serves recorded fields, whose readback and age would go unchecked), "
                "but the run was not told to expect one (instrument_is_replay)"
            )
        return claimed

    def _link_counters(self, timings_ms: dict[str, dict[str, float]]) -> dict[str, Any]:
        """The driver's own counters (sequence gaps, stale acks, reconnects...) and the command round trip."""
        link = self._driver_stats()
        rtt = getattr(self.driver, "heartbeat_rtt_ms", None)
        if callable(rtt):
            link["heartbeat_rtt_ms"] = rtt()
        send = timings_ms.get("send")
        if send is not None:  # a scan sent and its ack back: the link's round trip as the loop sees it
            link["command_round_trip_ms"] = send
        return link
