"""The instrument server's command queue under orderings too narrow to set up over the wire.

Most tests drive :class:`drivers.job_queue.JobQueue` itself, with a clock of their own; the beam's end
state is read off the queue in order, as the worker would carry it out.  Those about replies and the
driver use a real server (sockets bound, not started: no worker takes jobs off the queue) and a real
in-memory instrument, with clients registered as the server registers them on arrival.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from drivers.base import (
    Ack,
    BlankCommand,
    Command,
    DriverError,
    ScanCommand,
    SetTiltCommand,
    StopCommand,
    UnblankCommand,
)
from drivers.job_queue import URGENT, JobQueue
from drivers.memory import InMemoryDriver
from drivers.server import InstrumentServer
from drivers.server_clients import Client


def _tilt() -> SetTiltCommand:
    return SetTiltCommand(tilt_deg=1.0)  # (a fresh id and deadline each time)


class _Clock:
    """Monotonic seconds the test moves on."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


class _Rig:
    """A queue, the clients registered with it, and its clock."""

    def __init__(self, max_per_client: int = 2, max_total: int = 8192, deadman_s: float | None = 2.0) -> None:
        self.clients: set[bytes] = set()
        self.clock = _Clock()
        self.queue = JobQueue(max_per_client, max_total, deadman_s, self.clients.__contains__, clock=self.clock)

    def register(self, *identities: bytes) -> None:
        self.clients.update(identities)

    def send(self, identity: bytes, command: Command) -> list[tuple[bytes, str]]:
        """Offer a client's command; the (client, code) of the refusals to send."""
        return [(who, ack.code) for who, ack in self.queue.offer(identity, command)]

    def forget(self, identity: bytes) -> list[tuple[bytes, str]]:
        return [(who, ack.code) for who, ack in self.forget_answers(identity)]

    def forget_answers(self, identity: bytes) -> list[tuple[bytes, Ack]]:
        """Forget a client as the server does: no longer registered, then its moves dropped."""
        self.clients.discard(identity)
        return self.queue.client_gone(identity)

    def tick(self) -> list[tuple[bytes, str]]:
        """The dead-man's tick, as the server runs it: the refusals to send."""
        answers = []
        for identity, why in self.queue.check_deadman():
            answers += [(who, ack.code) for who, ack in self.queue.deadman(identity, why)]
        return answers

    def waiting(self) -> list[tuple[bytes | None, str]]:
        return [(job[0], job[1].kind) for job in self.queue if job is not None]


@pytest.fixture
def rig() -> _Rig:
    return _Rig()


def _beam_ends_blanked(waiting: list[tuple[bytes | None, str]]) -> bool:
    blanked = False
    for _, kind in waiting:
        blanked = kind in URGENT or (blanked and kind != "unblank")
    return blanked


# -- the queue on its own ------------------------------------------------------------------------------
def test_the_dead_man_keeps_the_silent_clients_blank_after_another_clients_unblank(rig):
    rig.register(b"A", b"B")
    rig.send(b"B", UnblankCommand())
    rig.send(b"A", BlankCommand())
    rig.send(b"A", _tilt())  # A commands, then falls silent
    assert _beam_ends_blanked(rig.waiting())
    rig.queue.deadman(b"A", "A silent")
    assert rig.waiting() == [(None, "blank"), (b"B", "unblank"), (b"A", "blank")]
    assert _beam_ends_blanked(rig.waiting())


def test_a_client_saying_bye_keeps_its_blank_with_the_dead_man_off():
    rig = _Rig(deadman_s=None)
    rig.register(b"A")
    rig.send(b"A", BlankCommand())
    rig.send(b"A", _tilt())
    rig.forget(b"A")
    assert not rig.queue.said_bye(b"A") and rig.waiting() == [(b"A", "blank")]


def test_another_clients_unblank_queued_before_the_dead_man_runs_after_its_blank_and_stays_watched(rig):
    rig.register(b"A", b"B")
    rig.send(b"B", UnblankCommand())
    rig.send(b"A", _tilt())
    answers = [(who, ack.code) for who, ack in rig.queue.deadman(b"A", "A silent")]
    assert rig.waiting() == [(None, "blank"), (b"B", "unblank")] and answers == [(b"A", "refused")]
    own = rig.queue.popleft()
    assert own is not None
    rig.queue.carried_out(own[1], accepted=True)
    assert b"B" in rig.queue.watches  # (the server's own blank ends nobody's watch: B's unblank comes after it)


def test_a_blank_that_fails_leaves_the_watch_on(rig):
    rig.register(b"A")
    rig.send(b"A", UnblankCommand())
    blank = BlankCommand()
    rig.send(b"A", blank)
    rig.queue.carried_out(blank, accepted=False)
    assert b"A" in rig.queue.watches
    again = BlankCommand()
    rig.send(b"A", again)
    rig.queue.carried_out(again, accepted=True)
    assert b"A" not in rig.queue.watches


def test_a_fold_stops_once_the_client_is_back_within_its_bound(rig):
    rig.register(b"A", b"B")
    sent = rig.send(b"A", BlankCommand()) + rig.send(b"A", BlankCommand())  # A at its bound (2)
    sent += rig.send(b"B", _tilt())
    sent += rig.send(b"A", BlankCommand())  # beyond it: taken (nothing to fold beside)
    sent += rig.forget(b"B")
    assert sent.count((b"A", "busy")) == 1 and len(rig.waiting()) == 2


def test_blanks_and_stops_of_many_clients_are_bounded_by_the_total():
    rig = _Rig(max_per_client=4, max_total=6)
    for n in range(10):
        rig.register(bytes([n]))
        for k in range(4):
            rig.send(bytes([n]), BlankCommand() if k % 2 else StopCommand())
    assert len(rig.queue) <= 6 + 1


def test_a_client_within_the_bound_is_not_answered_busy_when_its_blanks_come_to_wait_side_by_side():
    rig = _Rig(max_per_client=3)
    rig.register(b"A", b"B")
    sent = rig.send(b"A", BlankCommand()) + rig.send(b"B", _tilt()) + rig.send(b"A", BlankCommand())
    sent += rig.forget(b"B")
    assert rig.waiting() == [(b"A", "blank"), (b"A", "blank")] and not [s for s in sent if s[1] == "busy"]


def test_the_dead_man_answers_the_commands_it_drops_of_a_client_still_connected(rig):
    rig.register(b"A")
    rig.send(b"A", UnblankCommand())
    rig.send(b"A", _tilt())
    assert not rig.tick()  # (not silent yet)
    rig.clock.now_s += 10.0  # silent for 10 s, still registered (not yet forgotten)
    answers = rig.tick()
    assert answers == [(b"A", "refused"), (b"A", "refused")] and rig.waiting() == [(None, "blank")]


def test_a_client_heard_from_is_not_blanked_for(rig):
    rig.register(b"A")
    rig.send(b"A", UnblankCommand())
    for _ in range(5):
        rig.clock.now_s += 1.5
        rig.queue.heard(b"A")
        rig.tick()
    assert rig.waiting() == [(b"A", "unblank")] and rig.queue.stats["deadman_blanks"] == 0


def test_another_client_commanding_does_not_take_the_watch_over_the_first(rig):
    rig.register(b"A", b"B")
    rig.send(b"A", UnblankCommand())
    rig.send(b"A", ScanCommand(x_nm=0, y_nm=0, fov_nm=10, rows=8, cols=8, dwell_us=1))
    while rig.queue:  # (carried out: the beam is on)
        rig.queue.popleft()
    rig.clock.now_s += 1.5
    rig.send(b"B", _tilt())
    rig.forget(b"A")  # A dies: forgotten, then silent past the dead-man time
    rig.clock.now_s += 1.0
    rig.tick()
    assert rig.waiting()[0] == (None, "blank") and rig.queue.stats["deadman_blanks"] == 1


def test_the_queue_as_a_whole_is_bounded_too():
    rig = _Rig(max_per_client=4, max_total=6)
    sent: list[tuple[bytes, str]] = []
    for identity in (b"A", b"B"):
        rig.register(identity)
        for _ in range(4):
            sent += rig.send(identity, SetTiltCommand(tilt_deg=1.0))
    sent += rig.send(b"B", BlankCommand())  # (a blank is always taken)
    assert len(rig.queue) == 7 and sent.count((b"B", "busy")) == 2 and (b"A", "busy") not in sent


def test_a_duplicate_is_refused_and_an_expired_move_is_not_taken(rig):
    rig.register(b"A")
    tilt = SetTiltCommand(tilt_deg=1.0)
    assert rig.send(b"A", tilt) == [] and rig.send(b"A", tilt) == [(b"A", "duplicate")]
    late = SetTiltCommand(tilt_deg=2.0, deadline_unix_s=time.time() - 1.0)
    assert rig.send(b"A", late) == [(b"A", "expired")] and len(rig.queue) == 1


def test_a_command_answered_busy_may_be_sent_again(rig):
    rig.register(b"A")
    rig.send(b"A", _tilt().model_copy(update={"id": "t1"}))
    rig.send(b"A", _tilt().model_copy(update={"id": "t2"}))
    third = SetTiltCommand(tilt_deg=3.0)
    assert rig.send(b"A", third) == [(b"A", "busy")]
    rig.queue.popleft()
    assert rig.send(b"A", third) == []


def test_the_servers_blank_is_owed_after_it_fails_and_tried_again_ever_more_slowly(rig):
    rig.register(b"A")
    rig.queue.deadman(b"A", "A silent")
    pauses = []
    for _ in range(6):
        own = rig.queue.popleft()
        assert own is not None and own[0] is None
        rig.queue.carried_out(own[1], accepted=False)  # the blanker does not read back
        pauses.append(rig.queue.owed_pause_s)
        rig.tick()
        assert not rig.queue  # (not before its pause)
        rig.clock.now_s += rig.queue.owed_pause_s
        rig.tick()
    assert pauses == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0] and rig.queue.stats["deadman_blanks_again"] == 6
    while rig.queue:
        rig.queue.popleft()
    unblank = UnblankCommand()
    rig.send(b"A", unblank)
    rig.queue.popleft()
    rig.queue.carried_out(unblank, accepted=True)  # the beam is on at a watched client's word: nothing owed
    rig.clock.now_s += 5.0
    rig.queue.heard(b"A")
    rig.tick()
    assert not rig.queue and b"A" in rig.queue.watches and not rig.queue.blank_owed


def test_an_owed_blank_is_not_queued_again_while_one_of_the_servers_own_waits(rig):
    rig.register(b"A", b"B")
    rig.queue.deadman(b"A", "A silent")
    own = rig.queue.popleft()
    assert own is not None
    rig.queue.carried_out(own[1], accepted=False)  # owed from now on
    rig.queue.deadman(b"B", "B silent")  # another blank of the server's is queued meanwhile
    rig.clock.now_s += 10.0
    rig.tick()
    assert rig.waiting() == [(None, "blank")] and rig.queue.stats["deadman_blanks_again"] == 0


def test_at_stop_every_waiting_command_is_dropped_and_the_servers_blank_runs_last(rig):
    rig.register(b"A")
    rig.send(b"A", UnblankCommand())
    rig.send(b"A", BlankCommand())
    rig.queue.close()
    assert rig.waiting() == [(None, "blank")] and list(rig.queue)[-1] is None  # (the end marker)
    assert rig.queue.stats["dropped_at_stop"] == 2


def test_a_client_back_on_a_new_connection_is_not_blanked_for_its_old_one(rig):
    rig.register(b"old")
    rig.send(b"old", UnblankCommand())
    rig.send(b"old", _tilt())
    while rig.queue:
        rig.queue.popleft()
    rig.forget(b"old")  # its connection went quiet; it comes back as another identity and unblanks
    rig.clock.now_s += 1.0
    rig.register(b"new")
    unblank = UnblankCommand()
    rig.send(b"new", unblank)
    rig.queue.popleft()
    rig.queue.carried_out(unblank, accepted=True)  # the beam is on at the new connection's word
    rig.clock.now_s += 1.5  # the old one silent past the dead-man time, the new one heard
    rig.queue.heard(b"new")
    assert not rig.tick() and not rig.queue and set(rig.queue.watches) == {b"new"}


def test_an_unblank_refused_or_dropped_ends_no_watch(rig):
    rig.register(b"A", b"B")
    rig.send(b"A", _tilt())
    unblank = UnblankCommand()
    rig.send(b"B", unblank)
    rig.queue.carried_out(unblank, accepted=False)
    assert b"A" in rig.queue.watches
    rig.send(b"B", UnblankCommand())
    rig.forget(b"B")  # its unblank is dropped: it never runs
    assert b"A" in rig.queue.watches and not rig.queue._taken_at


def test_an_id_still_waiting_is_a_duplicate_even_once_the_id_memory_has_let_it_go(rig):
    rig.register(b"A")
    unblank = UnblankCommand()
    rig.send(b"A", unblank)
    rig.queue._seen.clear()  # (as after 100 000 other ids)
    assert rig.send(b"A", BlankCommand(id=unblank.id)) == [(b"A", "duplicate")]
    assert rig.waiting() == [(b"A", "unblank")]


def test_a_clients_blank_never_takes_the_place_of_the_servers_own():
    rig = _Rig(max_total=3)
    rig.register(b"A")
    rig.queue.deadman(b"A", "A silent")
    for _ in range(3):
        rig.send(b"A", BlankCommand())
    assert rig.waiting()[0] == (None, "blank")


def test_blanks_and_stops_during_a_scan_go_first_and_the_moves_before_them_are_refused(rig):
    rig.register(b"A", b"B")
    rig.send(b"A", _tilt())
    rig.send(b"B", StopCommand())
    rig.send(b"B", UnblankCommand())
    urgent, superseded = rig.queue.take_urgent_run()
    assert [c.kind for _, c in urgent] == ["stop"] and [c.kind for _, c in superseded] == ["set_tilt"]
    assert rig.waiting() == [(b"B", "unblank")] and rig.queue.held_by(b"A") == 0


# -- the queue under any sequence of events ----------------------------------------------------------
_KINDS = {"blank": BlankCommand, "stop": StopCommand, "unblank": UnblankCommand}
_CLIENTS = (b"A", b"B")
_BEAM = ("blank", "stop", "unblank")


class QueueMachine(RuleBasedStateMachine):
    """Clients send, fall silent, vanish, say bye or come back; the worker carries jobs out; time passes.

    The worker either takes the job at the front or sits inside a scan, during which waiting blanks and
    stops are carried out at once (and the commands before them refused).  Blanks may fail.  Replies
    to a vanished client fail and forget it, re-entrantly, as in the server.  Checked after every step:
    whoever turned the beam on is watched unless a blank of the server's is coming or owed; each
    client's bound and the total hold, beyond one blank and one stop per run; no move of a gone client
    waits; nothing answered waits; a registered client's blank or stop leaves the queue only carried
    out or answered; the per-client counts are exact.  At the end, with the queue run out: the beam is
    blanked if the last beam command taken was a blank or stop (or the dead-man's blank came after it)
    and no blank failed since.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rig = _Rig(max_per_client=2, max_total=5)
        self.unreachable: set[bytes] = set()  # (vanished from the socket, not yet forgotten)
        self.in_scan = False
        self.blanked = True  # (the beam starts blanked)
        self.turned_on_by: bytes | None = None
        self.last = ""  # the kind of the last blank, stop or unblank taken ("blank" too for the dead-man's)
        self.failed_since_last = False
        self.answered: set[str] = set()
        self.urgent_of_clients: set[str] = set()  # blanks and stops of registered clients taken, not carried out

    # -- rules -----------------------------------------------------------------------------------------
    @rule(client=st.sampled_from(_CLIENTS), kind=st.sampled_from([*_BEAM, "tilt"]))
    def send(self, client: bytes, kind: str) -> None:
        self.rig.register(client)
        self.unreachable.discard(client)
        self.rig.queue.heard(client)
        command = _KINDS[kind]() if kind in _KINDS else SetTiltCommand(tilt_deg=1.0)
        self._deliver(self.rig.queue.offer(client, command))
        taken = any(job is not None and job[1].id == command.id for job in self.rig.queue)
        if kind in _BEAM and taken:
            self.last, self.failed_since_last = kind, False
        if kind in URGENT and taken and client in self.rig.clients:
            self.urgent_of_clients.add(command.id)

    @precondition(lambda self: not self.in_scan)
    @rule(works=st.booleans())
    def carry_out_the_front(self, works: bool) -> None:
        if self.rig.queue:
            job = self.rig.queue.popleft()
            if job is not None:
                self._carry_out(job[0], job[1], accepted=works or job[1].kind not in URGENT)

    @rule()
    def a_scan_starts_or_ends(self) -> None:
        self.in_scan = not self.in_scan

    @precondition(lambda self: self.in_scan)
    @rule(works=st.booleans())
    def blanks_and_stops_during_the_scan(self, works: bool) -> None:
        urgent, superseded = self.rig.queue.take_urgent_run()
        for owner, command in urgent:
            self._carry_out(owner, command, accepted=works)
        self.answered.update(command.id for _, command in superseded)

    @rule(seconds=st.sampled_from([0.5, 1.5, 3.0]), silent=st.sampled_from([None, *_CLIENTS]))
    def time_passes(self, seconds: float, silent: bytes | None) -> None:
        """Every registered client beats meanwhile, but ``silent``."""
        self.rig.clock.now_s += seconds
        for client in self.rig.clients - {silent}:
            self.rig.queue.heard(client)
        before = self.rig.queue.stats["deadman_blanks_again"]
        for identity, why in self.rig.queue.check_deadman():
            self._deliver(self.rig.queue.deadman(identity, why))
            self._dead_man_blanked()
        if self.rig.queue.stats["deadman_blanks_again"] > before:
            self._dead_man_blanked()

    @rule(client=st.sampled_from(_CLIENTS), how=st.sampled_from(["forgotten", "bye", "vanishes"]))
    def goes(self, client: bytes, how: str) -> None:
        """Forgotten (silent past three heartbeats), saying ``bye``, or gone from the socket unnoticed."""
        if how == "vanishes":
            self.unreachable.add(client)
            return
        self._forget(client)
        if how == "bye":
            before = self.rig.queue.stats["deadman_blanks"]
            self._deliver(self.rig.queue.said_bye(client))
            if self.rig.queue.stats["deadman_blanks"] > before:
                self._dead_man_blanked()

    # -- invariants ------------------------------------------------------------------------------------
    @invariant()
    def whoever_turned_the_beam_on_is_watched(self) -> None:
        queue = self.rig.queue
        own_waits = any(job is not None and job[0] is None for job in queue)
        assert self.blanked or own_waits or queue.blank_owed or self.turned_on_by in queue.watches

    @invariant()
    def the_waiting_blanks_and_stops_are_counted(self) -> None:
        """The count the worker looks at before every job, instead of walking the queue."""
        waiting = sum(job is not None and job[1].kind in URGENT for job in self.rig.queue)
        assert self.rig.queue._urgent == waiting

    @invariant()
    def the_queue_stays_bounded(self) -> None:
        counted = dict.fromkeys(self.rig.clients, 0)
        seen: set[tuple[bytes, str]] = set()  # (client, kind) of the blanks and stops in the current run
        for job in self.rig.queue:
            if job is None or job[1].kind not in URGENT:
                seen.clear()
            if job is None or job[0] not in counted:
                continue
            key = (job[0], job[1].kind)
            counted[job[0]] += key in seen or job[1].kind not in URGENT
            seen.add(key)
        assert all(n <= self.rig.queue.max_per_client for n in counted.values())
        clients_jobs = sum(1 for job in self.rig.queue if job is not None and job[0] is not None)
        assert clients_jobs <= self.rig.queue.max_total + 2

    @invariant()
    def no_move_of_a_gone_client_waits_and_nothing_answered_does(self) -> None:
        for job in self.rig.queue:
            assert job is not None
            owner, command = job
            assert owner is None or owner in self.rig.clients or command.kind in URGENT
            assert command.id not in self.answered

    @invariant()
    def the_counts_per_client_are_exact(self) -> None:
        owners = [job[0] for job in self.rig.queue if job is not None]
        for owner in {None, *_CLIENTS}:
            assert self.rig.queue.held_by(owner) == owners.count(owner)

    @invariant()
    def a_registered_clients_blank_or_stop_waits_until_carried_out_or_answered(self) -> None:
        waiting = {job[1].id for job in self.rig.queue if job is not None}
        assert self.urgent_of_clients - self.answered <= waiting

    def teardown(self) -> None:
        while self.rig.queue:
            job = self.rig.queue.popleft()
            if job is not None:
                self._carry_out(job[0], job[1], accepted=True)
        if self.last in URGENT and not self.failed_since_last:
            assert self.blanked or self.rig.queue.blank_owed

    # -- helpers ---------------------------------------------------------------------------------------
    def _carry_out(self, owner: bytes | None, command: Command, accepted: bool) -> None:
        if command.kind in _BEAM and accepted:
            self.blanked = command.kind != "unblank"
            self.turned_on_by = None if self.blanked else owner
        if command.kind in URGENT and not accepted:
            self.failed_since_last = True
        if command.kind in _BEAM:
            self.rig.queue.carried_out(command, accepted)
        self.urgent_of_clients.discard(command.id)

    def _forget(self, client: bytes) -> None:
        if client in self.rig.clients:
            # (a gone client's blank or stop may fold into an earlier one of its kind, unanswered)
            self.urgent_of_clients -= {job[1].id for job in self.rig.queue if job is not None and job[0] == client}
            self.unreachable.discard(client)
            self._deliver(self.rig.forget_answers(client))

    def _deliver(self, answers: list[tuple[bytes, Ack]]) -> None:
        """Send refusals as the server does: to registered clients only; one that fails forgets its client."""
        self.answered.update(ack.command_id for _, ack in answers)
        for who, _ in answers:
            if who in self.unreachable:
                self._forget(who)

    def _dead_man_blanked(self) -> None:
        """The server's blank went to the front: the last beam command unless one of a client waits after it."""
        if not [job for job in self.rig.queue if job is not None and job[0] is not None and job[1].kind in _BEAM]:
            self.last, self.failed_since_last = "blank", False


def _check_queue(examples: int) -> None:
    machine = QueueMachine.TestCase
    machine.settings = settings(max_examples=examples, stateful_step_count=30, deadline=None)
    machine().runTest()


def test_the_queue_keeps_its_invariants_under_any_sequence() -> None:
    _check_queue(examples=500)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_queue_keeps_its_invariants_over_2000_sequences() -> None:
    _check_queue(examples=2000)


# -- the server around it: replies and the driver ------------------------------------------------------
@pytest.fixture
def server() -> Iterator[InstrumentServer]:
    s = InstrumentServer(InMemoryDriver(), "tcp://127.0.0.1:0", max_jobs_per_client=2, deadman_s=2.0)
    yield s
    s.stop()


def _register(server: InstrumentServer, identity: bytes) -> None:
    client = Client(time.monotonic())
    client.welcomed = True
    server._clients[identity] = client


def _answers(server: InstrumentServer) -> list[tuple[bytes, str]]:
    """Record the (client, code) of every ack the server sends from now on."""
    sent: list[tuple[bytes, str]] = []

    def reply(identity: bytes, parts: list, track: bool = False) -> None:
        body = json.loads(bytes(parts[0]))
        if body.get("type") == "ack":
            sent.append((identity, body["ack"]["code"]))

    server._reply = reply  # type: ignore[method-assign]
    return sent


def test_a_busy_answer_to_an_unreachable_client_does_not_bring_back_its_dropped_moves(server):
    _register(server, b"A")  # (no such peer on the socket: every reply to it fails, and it is forgotten)
    server._accept(b"A", UnblankCommand())
    server._accept(b"A", ScanCommand(x_nm=0, y_nm=0, fov_nm=10, rows=8, cols=8, dwell_us=1))
    server._accept(b"A", BlankCommand())  # beyond the bound: taken
    server._accept(b"A", BlankCommand())  # folded; the busy answer fails and A is forgotten meanwhile
    assert b"A" not in server._clients
    assert [job[1].kind for job in server._queue if job is not None] == ["blank"]  # its unblank and scan stay dropped


def test_a_client_forgotten_by_one_failed_reply_is_not_tried_again_in_the_same_step(server):
    _register(server, b"A")  # (no such peer: replies to it fail)
    for command in (BlankCommand(), SetTiltCommand(tilt_deg=1.0), StopCommand(), BlankCommand()):
        server._accept(b"A", command)
    server._queue.watches[b"A"].heard -= 10.0
    server._check_deadman()  # its blanks fold (the busy answer fails: forgotten); its tilt's refusal is not sent
    assert server.stats["undeliverable"] == 1 and b"A" not in server._clients
    assert [(job[0], job[1].kind) for job in server._queue if job is not None] == [
        (None, "blank"), (b"A", "blank"), (b"A", "stop")
    ]  # fmt: skip


def test_the_servers_own_blank_is_carried_out_however_long_it_waited(server, monkeypatch):
    own = server._queue.blank_next("deadman")
    hour_later = time.time() + 3600.0  # (behind a driver call that took an hour)
    monkeypatch.setattr(time, "time", lambda: hour_later)
    ack = server._calls.execute(own)
    assert ack.accepted and server.driver.state.blanked


def test_a_clients_blank_is_carried_out_however_long_it_waited_or_late_it_came(server, monkeypatch):
    _register(server, b"A")
    server._accept(b"A", BlankCommand(deadline_unix_s=time.time() - 1.0))  # late already: taken all the same
    server._accept(b"A", StopCommand(deadline_unix_s=time.time() + 0.5))
    assert [job[1].kind for job in server._queue if job is not None] == ["blank", "stop"]
    hour_later = time.time() + 3600.0
    monkeypatch.setattr(time, "time", lambda: hour_later)
    acks = [server._calls.execute(job[1]) for job in server._queue if job is not None]
    assert all(ack.accepted for ack in acks) and server.driver.state.blanked


def test_the_dead_man_refuses_the_dropped_moves_of_a_client_still_connected_over_the_socket(server):
    _register(server, b"A")
    sent = _answers(server)
    server._accept(b"A", UnblankCommand())
    server._accept(b"A", SetTiltCommand(tilt_deg=1.0))
    server._queue.watches[b"A"].heard -= 10.0  # silent for 10 s, still registered (not yet forgotten)
    server._check_deadman()
    assert sent == [(b"A", "refused"), (b"A", "refused")]


class _FailingBlanker(InMemoryDriver):
    """An instrument whose first ``failures`` blanks fail (the blanker does not read back)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def send(self, command, timeout_s: float = 5.0):
        if command.kind == "blank" and self.failures > 0:
            self.failures -= 1
            raise DriverError("the blanker did not read back")
        return super().send(command, timeout_s)


def test_the_server_blanks_again_when_its_own_blank_fails():
    server = InstrumentServer(_FailingBlanker(1), "tcp://127.0.0.1:0", deadman_s=2.0)
    try:
        _register(server, b"A")
        _answers(server)
        server._accept(b"A", UnblankCommand())
        server._run(*server._queue.popleft())
        server._queue.watches[b"A"].heard -= 10.0
        server._check_deadman()
        server._run(*server._queue.popleft())  # the server's blank fails
        assert not server.driver.state.blanked and not server._queue and server._queue.blank_owed
        time.sleep(server._queue.owed_pause_s)  # (its pause passes)
        server._check_deadman()  # the next tick
        server._run(*server._queue.popleft())
        assert server.driver.state.blanked and server.stats["deadman_blanks_again"] == 1
    finally:
        server.stop()


def test_expired_commands_do_not_push_the_id_of_one_that_ran_out_of_memory():
    """100 001 cheap expired commands made a scan that ran acceptable again under its old id."""
    from collections import Counter

    from drivers.job_queue import _SEEN_IDS, JobQueue

    queue = JobQueue(10, 100, None, lambda _identity: True, Counter(), lambda: None)
    scan = ScanCommand(x_nm=0, y_nm=0, fov_nm=10, rows=8, cols=8, dwell_us=1)
    assert queue.offer(b"A", scan) == []
    for i in range(_SEEN_IDS + 1):
        expired = scan.model_copy(update={"id": f"old-{i}", "deadline_unix_s": 1.0})
        assert queue.offer(b"B", expired)[0][1].code == "expired"
    queue.popleft()  # (it ran)
    assert queue.offer(b"A", scan)[0][1].code == "duplicate"
