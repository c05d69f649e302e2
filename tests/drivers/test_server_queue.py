"""The instrument server's job queue under orderings too narrow to set up over the wire.

A real server (sockets bound, not started: no worker takes jobs off the queue) and a real in-memory
instrument; clients are registered as the server registers them on arrival.  The beam's end state is
read off the queue in order, as the worker would carry it out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import BlankCommand, ScanCommand, SetTiltCommand, StopCommand, UnblankCommand
from drivers.memory import InMemoryDriver
from drivers.server import InstrumentServer, _Client


@pytest.fixture
def server() -> Iterator[InstrumentServer]:
    s = InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", max_jobs_per_client=2, deadman_s=2.0)
    yield s
    s.stop()


def _register(server: InstrumentServer, identity: bytes) -> None:
    client = _Client(time.monotonic())
    client.welcomed = True
    server._clients[identity] = client


def _queue(server: InstrumentServer) -> list[tuple[bytes | None, str]]:
    return [(job[0], job[1].kind) for job in server._jobs if job is not None]


def _beam_ends_blanked(server: InstrumentServer) -> bool:
    blanked = False
    for _, kind in _queue(server):
        blanked = kind in ("blank", "stop") or (blanked and kind != "unblank")
    return blanked


def test_a_busy_answer_to_an_unreachable_client_does_not_bring_back_its_dropped_moves(server):
    _register(server, b"A")  # (no such peer on the socket: every reply to it fails, and it is forgotten)
    server._accept(b"A", UnblankCommand())
    server._accept(b"A", ScanCommand(x_nm=0, y_nm=0, fov_nm=10, rows=8, cols=8, dwell_us=1))
    server._accept(b"A", BlankCommand())  # beyond the bound: taken
    server._accept(b"A", BlankCommand())  # folded; the busy answer fails and A is forgotten meanwhile
    assert b"A" not in server._clients
    assert [kind for _, kind in _queue(server)] == ["blank"]  # its unblank and scan stay dropped


def test_the_dead_man_keeps_the_silent_clients_blank_after_another_clients_unblank(server):
    for identity in (b"A", b"B"):
        _register(server, identity)
    server._accept(b"B", UnblankCommand())
    server._accept(b"A", BlankCommand())
    server._accept(b"A", SetTiltCommand(tilt_deg=1.0))  # A commands, then falls silent
    assert _beam_ends_blanked(server)
    server._deadman(b"A", "A silent")
    assert _queue(server) == [(None, "blank"), (b"B", "unblank"), (b"A", "blank")]
    assert _beam_ends_blanked(server)


def test_a_client_saying_bye_keeps_its_blank_with_the_dead_man_off():
    server = InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", deadman_s=None)
    try:
        _register(server, b"A")
        server._accept(b"A", BlankCommand())
        server._accept(b"A", SetTiltCommand(tilt_deg=1.0))
        server._said_bye(b"A")
        assert _queue(server) == [(b"A", "blank")]
    finally:
        server.stop()


def test_the_servers_own_blank_is_carried_out_however_long_it_waited(server, monkeypatch):
    server._blank_next("deadman")
    _, own = server._jobs[0]
    hour_later = time.time() + 3600.0  # (behind a driver call that took an hour)
    monkeypatch.setattr(time, "time", lambda: hour_later)
    ack = server._execute(own)
    assert ack.accepted and server.driver.state.blanked


def _answers(server: InstrumentServer) -> list[tuple[bytes, str]]:
    """Record the (client, code) of every ack the server sends from now on."""
    import json

    sent: list[tuple[bytes, str]] = []

    def reply(identity: bytes, parts: list, track: bool = False) -> None:
        body = json.loads(bytes(parts[0]))
        if body.get("type") == "ack":
            sent.append((identity, body["ack"]["code"]))

    server._reply = reply  # type: ignore[method-assign]
    return sent


def test_a_clients_blank_is_carried_out_however_long_it_waited_or_late_it_came(server, monkeypatch):
    _register(server, b"A")
    server._accept(b"A", BlankCommand(deadline_unix_s=time.time() - 1.0))  # late already: taken all the same
    server._accept(b"A", StopCommand(deadline_unix_s=time.time() + 0.5))
    assert [kind for _, kind in _queue(server)] == ["blank", "stop"]
    hour_later = time.time() + 3600.0
    monkeypatch.setattr(time, "time", lambda: hour_later)
    acks = [server._execute(job[1]) for job in server._jobs if job is not None]
    assert all(ack.accepted for ack in acks) and server.driver.state.blanked


def test_another_clients_unblank_queued_before_the_dead_man_runs_after_its_blank_and_stays_watched(server):
    for identity in (b"A", b"B"):
        _register(server, identity)
    sent = _answers(server)
    server._accept(b"B", UnblankCommand())
    server._accept(b"A", SetTiltCommand(tilt_deg=1.0))
    server._deadman(b"A", "A silent")
    assert _queue(server) == [(None, "blank"), (b"B", "unblank")] and sent == [(b"A", "refused")]
    server._run(*server._jobs.popleft())
    assert server.driver.state.blanked
    assert b"B" in server._armed  # (the server's own blank ends nobody's watch: B's unblank comes after it)


def test_a_blank_that_fails_leaves_the_watch_on(server):
    _register(server, b"A")
    _answers(server)
    server._accept(b"A", UnblankCommand())
    blank = BlankCommand()
    server._accept(b"A", blank)
    server._blank_carried_out(blank, accepted=False)
    assert b"A" in server._armed
    again = BlankCommand()
    server._accept(b"A", again)
    server._blank_carried_out(again, accepted=True)
    assert b"A" not in server._armed


def test_a_fold_stops_once_the_client_is_back_within_its_bound(server):
    for identity in (b"A", b"B"):
        _register(server, identity)
    sent = _answers(server)
    server._accept(b"A", BlankCommand())
    server._accept(b"A", BlankCommand())  # A at its bound (2)
    server._accept(b"B", SetTiltCommand(tilt_deg=1.0))
    server._accept(b"A", BlankCommand())  # beyond it: taken (nothing to fold beside)
    server._forget(b"B")
    assert sent.count((b"A", "busy")) == 1 and len(_queue(server)) == 2


def test_blanks_and_stops_of_many_clients_are_bounded_by_the_total():
    server = InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", max_jobs_per_client=4, max_jobs_total=6)
    try:
        _answers(server)
        for n in range(10):
            _register(server, bytes([n]))
            for k in range(4):
                server._accept(bytes([n]), BlankCommand() if k % 2 else StopCommand())
        assert len(server._jobs) <= 6 + 1
    finally:
        server.stop()


def test_a_client_within_the_bound_is_not_answered_busy_when_its_blanks_come_to_wait_side_by_side(server):
    server.max_jobs_per_client = 3
    for identity in (b"A", b"B"):
        _register(server, identity)
    sent = _answers(server)
    server._accept(b"A", BlankCommand())
    server._accept(b"B", SetTiltCommand(tilt_deg=1.0))
    server._accept(b"A", BlankCommand())
    server._forget(b"B")
    assert _queue(server) == [(b"A", "blank"), (b"A", "blank")] and not [s for s in sent if s[1] == "busy"]


_KINDS = {"blank": BlankCommand, "stop": StopCommand, "unblank": UnblankCommand}
_CLIENTS = (b"A", b"B")
_OPS = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(_CLIENTS), st.sampled_from(["blank", "stop", "unblank", "tilt"])),
    st.tuples(st.just("run"), st.none(), st.none()),
    st.tuples(st.sampled_from(["forget", "deadman"]), st.sampled_from(_CLIENTS), st.none()),
)


def _over_the_bound(server: InstrumentServer) -> int:
    """The most by which a live client's waiting jobs exceed the bound, not counting one blank and one stop per run.

    A run is a stretch of consecutive blanks and stops in the queue; beyond the first of its kind in a run,
    a client's blanks and stops count against the bound as its other commands do.
    """
    counted = dict.fromkeys(server._clients, 0)
    seen: set[tuple[bytes, str]] = set()
    for job in server._jobs:
        if job is None or job[1].kind not in ("blank", "stop"):
            seen.clear()
        if job is None or job[0] not in counted:
            continue
        key = (job[0], job[1].kind)
        counted[job[0]] += key in seen or job[1].kind not in ("blank", "stop")
        seen.add(key)
    return max([n - server.max_jobs_per_client for n in counted.values()], default=0)


def _carry_out(server: InstrumentServer, ops: list[tuple[str, bytes | None, str | None]]) -> tuple[bool, str, int]:
    """Apply ``ops`` in order (``run``: the worker carries out the job at the front), then the rest of the queue.

    Returns whether the beam ends blanked, the kind of the last blank, stop or unblank the server took
    (``""``: none), and the most :func:`_over_the_bound` after any op.
    """
    blanked, last, over, turned_on_by = True, "", 0, None  # (the beam starts blanked)

    def run_front() -> None:
        nonlocal blanked, turned_on_by
        job = server._jobs.popleft()
        if job is not None and job[1].kind in _KINDS:
            blanked = job[1].kind != "unblank"
            turned_on_by = None if blanked else job[0]
        if job is not None and job[1].kind in ("blank", "stop"):
            server._blank_carried_out(job[1], accepted=True)

    for op, client, kind in ops:
        if op == "send" and client is not None and kind is not None:
            if client not in server._clients:
                _register(server, client)
            command = _KINDS[kind]() if kind in _KINDS else SetTiltCommand(tilt_deg=1.0)
            server._accept(client, command)
            taken = any(job is not None and job[1].id == command.id for job in server._jobs)
            last = kind if taken and kind in _KINDS else last
        elif op == "run" and server._jobs:
            run_front()
        elif op == "forget" and client is not None:
            server._forget(client)
        elif op == "deadman" and client is not None:
            server._deadman(client, "silent")
            if not [job for job in list(server._jobs)[1:] if job is not None and job[1].kind in _KINDS]:
                last = "blank"  # (the server's own, at the front: the last unless a beam command waits after it)
        over = max(over, _over_the_bound(server))
        own_blank_waits = any(job is not None and job[0] is None for job in server._jobs)
        # The beam on with no blank of the server's coming: whoever turned it on is watched.
        assert blanked or own_blank_waits or turned_on_by in server._armed
    while server._jobs:
        run_front()
    return blanked, last, over


@settings(max_examples=2000, deadline=None)
@given(st.lists(_OPS, max_size=14))
def test_the_beam_ends_as_the_last_blank_or_stop_taken_asked_and_the_queue_stays_bounded(ops):
    server = InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", max_jobs_per_client=2, deadman_s=2.0)
    server._reply = lambda identity, parts, track=False: None  # type: ignore[method-assign]  # (no peers)
    try:
        blanked, last, over = _carry_out(server, ops)
    finally:
        server.stop()
    if last in ("blank", "stop"):
        assert blanked
    assert over <= 0


def test_the_dead_man_answers_the_commands_it_drops_of_a_client_still_connected(server):
    _register(server, b"A")
    sent = _answers(server)
    server._accept(b"A", UnblankCommand())
    server._accept(b"A", SetTiltCommand(tilt_deg=1.0))
    server._check_deadman()  # (not silent yet)
    assert not sent
    server._armed[b"A"].heard -= 10.0  # silent for 10 s, still registered (not yet forgotten)
    server._check_deadman()
    assert sent == [(b"A", "refused"), (b"A", "refused")] and _queue(server) == [(None, "blank")]


def test_another_client_commanding_does_not_take_the_watch_over_the_first(server):
    for identity in (b"A", b"B"):
        _register(server, identity)
    server._accept(b"A", UnblankCommand())
    server._accept(b"A", ScanCommand(x_nm=0, y_nm=0, fov_nm=10, rows=8, cols=8, dwell_us=1))
    server._jobs.clear()  # (carried out: the beam is on)
    server._accept(b"B", SetTiltCommand(tilt_deg=1.0))
    server._forget(b"A")  # A dies: forgotten, then silent past the dead-man time
    server._armed[b"A"].heard -= 10.0
    server._check_deadman()
    assert _queue(server)[0] == (None, "blank") and server.stats["deadman_blanks"] == 1


def test_the_queue_as_a_whole_is_bounded_too():
    server = InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", max_jobs_per_client=4, max_jobs_total=6)
    try:
        sent = _answers(server)
        for identity in (b"A", b"B"):
            _register(server, identity)
            for _ in range(4):
                server._accept(identity, SetTiltCommand(tilt_deg=1.0))
        server._accept(b"B", BlankCommand())  # (a blank is always taken)
        assert len(server._jobs) == 7 and sent.count((b"B", "busy")) == 2 and (b"A", "busy") not in sent
    finally:
        server.stop()


class _FailingBlanker(InMemoryDriver):
    """An instrument whose first ``failures`` blanks fail (the blanker does not read back)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def send(self, command, timeout_s: float = 5.0):
        if command.kind == "blank" and self.failures > 0:
            from drivers.base import DriverError

            self.failures -= 1
            raise DriverError("the blanker did not read back")
        return super().send(command, timeout_s)


def test_the_server_blanks_again_when_its_own_blank_fails():
    server = InstrumentServer(_FailingBlanker(1), "tcp://127.0.0.1:0", deadman_s=2.0)
    try:
        _register(server, b"A")
        _answers(server)
        server._accept(b"A", UnblankCommand())
        server._run(*server._jobs.popleft())
        server._deadman(b"A", "A silent")
        server._run(*server._jobs.popleft())  # the server's blank fails
        assert not server.driver.state.blanked and not server._jobs
        server._owed_again_at = 0.0  # (its pause passed)
        server._check_deadman()  # the next tick
        server._run(*server._jobs.popleft())
        assert server.driver.state.blanked and server.stats["deadman_blanks_again"] == 1
    finally:
        server.stop()


def test_a_blank_that_keeps_failing_is_tried_again_ever_more_slowly_and_a_clients_unblank_ends_it():
    server = InstrumentServer(_FailingBlanker(10**6), "tcp://127.0.0.1:0", deadman_s=2.0)
    try:
        _register(server, b"A")
        _answers(server)
        server._deadman(b"A", "A silent")
        pauses = []
        for _ in range(6):
            server._run(*server._jobs.popleft())
            pauses.append(server._owed_pause_s)
            server._owed_again_at = 0.0  # (as if the pause had passed)
            server._check_deadman()
        assert pauses == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0]
        server._jobs.clear()
        server._accept(b"A", UnblankCommand())
        server._run(*server._jobs.popleft())  # the beam is on at a watched client's word: nothing owed
        server._check_deadman()
        assert not server._jobs and b"A" in server._armed
    finally:
        server.stop()


def test_a_clients_blank_never_takes_the_place_of_the_servers_own():
    server = InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", max_jobs_total=3, deadman_s=2.0)
    try:
        _register(server, b"A")
        _answers(server)
        server._deadman(b"A", "A silent")
        for _ in range(3):
            server._accept(b"A", BlankCommand())
        assert _queue(server)[0] == (None, "blank")
    finally:
        server.stop()
