"""The instrument server's command queue: what waits for the driver, and the rules that keep the beam safe.

Bookkeeping only, without sockets or threads: :class:`~drivers.server.InstrumentServer` holds a
:class:`JobQueue` under its lock, carries out the jobs at its front, and sends the refusals its
methods return once they have returned (with the queue whole: a reply that fails forgets its client,
which comes back here).

The rules, in short (docs/PROTOCOL.md has them in full):

- Blanks and stops are always taken and never expire.  Other commands are refused ``busy`` beyond a
  client's bound or the total bound, ``expired`` past their deadline, ``duplicate`` by id.
- Beyond a client's bound, its newer blank or stop folds into its own earlier one of the same kind
  in the same run of blanks and stops (the older is answered ``busy``); beyond the total, blanks and
  stops fold across clients.  The server's own blanks never fold into a client's.
- A client whose other command was taken is watched (the dead-man) until a blank or stop taken after
  its last command has been carried out, or another client's unblank taken after it has.  When a
  watched client falls silent or says ``bye``, its moves are dropped, its blanks and stops keep their
  places, and the server's own blank goes to the front; if the instrument fails that blank, the blank
  is owed and tried again ever more slowly.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from drivers.base import Ack, BlankCommand, Command, new_command_id

logger = logging.getLogger(__name__)

#: The ids of the commands the server gives on its own start with this (reserved to it).
SERVER_ID_PREFIX = "server-"
#: The deadline of the server's own blanks: the largest the command schema allows (year 5138).
NEVER_UNIX_S = 1e11
#: The commands that are always taken, never expire, and fold into their like.
URGENT = ("blank", "stop")
#: The fold key of the server's own blanks and stops (no client has an empty identity).
_OWN = b""
_SEEN_IDS = 100_000  # command ids remembered for duplicate detection
_OWED_FIRST_PAUSE_S, _OWED_MAX_PAUSE_S = 0.25, 5.0

#: A waiting command: (client, command), client None for the server's own.
Queued = tuple[bytes | None, Command]
#: A job: a waiting command, or None, the end marker queued at stop.
Job = Queued | None
#: A refusal to send: (client, ack).
Answer = tuple[bytes, Ack]


@dataclass(slots=True)
class Watch:
    """A client whose commands may have left the beam on: when last heard from, and its latest command's number."""

    heard: float  # monotonic s
    armed_at: int


class JobQueue:
    """The commands waiting for the driver, with the clients' dead-man watches.

    Parameters
    ----------
    max_per_client, max_total
        Bounds on the commands waiting, per client and in all (blanks and stops are always taken).
    deadman_s
        How long a watched client may be silent before the beam is blanked for it (``None``: never).
    is_client
        Whether a client is still registered (a gone client's blanks and stops fold without an answer).
    stats
        Counters shared with the server.
    on_job
        Called whenever a job is queued (the server wakes its worker).
    clock
        Monotonic seconds.
    """

    def __init__(
        self,
        max_per_client: int,
        max_total: int,
        deadman_s: float | None,
        is_client: Callable[[bytes], bool],
        stats: Counter[str] | None = None,
        on_job: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_per_client = max_per_client
        self.max_total = max_total
        self.deadman_s = deadman_s
        self.stats: Counter[str] = Counter() if stats is None else stats
        self._is_client = is_client
        self._on_job = on_job
        self._clock = clock
        self._jobs: deque[Job] = deque()
        self._held: Counter[bytes | None] = Counter()  # waiting commands per client (None: the server's own)
        self._urgent = 0  # waiting blanks and stops (the worker asks before every job: no walk of the queue)
        self._seen: OrderedDict[str, None] = OrderedDict()  # (the oldest is forgotten first)
        #: The watched clients (kept once the client is forgotten, until the dead-man has blanked for it).
        #: Commands are numbered as they are taken: a watch holds its client's latest command's number, and
        #: each waiting blank, stop or unblank of a client has its own.  A blank or stop carried out ends the
        #: watches armed before it was taken (everything taken before it has run or been refused), and so
        #: does a client's unblank of the other clients'; a failed one ends nothing.
        self.watches: dict[bytes, Watch] = {}
        self._taken = 0
        self._taken_at: dict[str, int] = {}
        #: The server's own blank failed: it is queued again (after a pause that doubles up to 5 s with each
        #: failure) until a blank or stop works, or a client's unblank does (that client is watched).
        self.blank_owed = False
        self.owed_pause_s = 0.0
        self._owed_again_at = 0.0

    # -- the queue as the worker sees it -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs))

    def popleft(self) -> Job:
        """The job at the front, taken off the queue (IndexError when empty)."""
        job = self._jobs.popleft()
        if job is not None:
            self._held[job[0]] -= 1
            self._urgent -= job[1].kind in URGENT
        return job

    def held_by(self, identity: bytes | None) -> int:
        """Commands of ``identity`` waiting (``None``: the server's own)."""
        return self._held[identity]

    # -- taking commands -----------------------------------------------------------------------------
    def offer(self, identity: bytes, command: Command, now_unix_s: float | None = None) -> list[Answer]:
        """A client's command: take it, or refuse it (``duplicate``, ``busy``, ``expired``); the refusals to send."""
        if command.id in self._seen or command.id in self._taken_at:  # (the latter: still waiting, forgotten by
            # the former after 100 000 other ids; a blank, stop or unblank's number must stay its own)
            self.stats["duplicates"] += 1
            return [(identity, Ack.refusal(command, "duplicate", "a command with this id was already received; "
                                           "it is not executed again"))]  # fmt: skip
        full = self._held[identity] >= self.max_per_client
        if (full or len(self._jobs) >= self.max_total) and command.kind not in URGENT:
            self.stats["busy"] += 1  # (before its id is kept: a command refused as busy may be sent again)
            waiting = f"{self.max_per_client} commands of this client" if full else f"{len(self._jobs)} commands"
            return [(identity, Ack.refusal(command, "busy", f"{waiting} are waiting for the instrument already"))]
        now_unix_s = time.time() if now_unix_s is None else now_unix_s
        if command.kind not in URGENT and now_unix_s > command.deadline_unix_s:  # (a blank or stop never expires)
            self.stats["expired"] += 1  # (before its id is kept: never run, it takes no place among the ids
            # remembered, which a flood of expired commands pushed a command that ran out of, to run again)
            return [(identity, Ack.refusal(command, "expired", "deadline passed before it arrived"))]
        self._seen[command.id] = None
        while len(self._seen) > _SEEN_IDS:
            self._seen.popitem(last=False)
        self._taken += 1
        if command.kind in (*URGENT, "unblank"):
            self._taken_at[command.id] = self._taken
        if command.kind not in URGENT and self.deadman_s is not None:
            self.watches[identity] = Watch(self._clock(), self._taken)
        self._append((identity, command))
        across = len(self._jobs) > self.max_total
        if full or across:  # (a blank or stop: always taken, folded into its like where it waits beside one)
            return self._fold_urgent_runs(self._last_run_start(), across)
        return []

    def heard(self, identity: bytes) -> None:
        """A message from ``identity`` arrived: its watch, if any, starts again."""
        if (watch := self.watches.get(identity)) is not None:
            watch.heard = self._clock()

    def carried_out(self, command: Command, accepted: bool) -> None:
        """A blank, stop or unblank has run.

        A blank or stop that worked ends the watch of the clients armed before it was taken; so does a
        client's unblank that worked, of the other clients (the beam is on at a watched client's word
        now: everything taken before it has run or been refused).  Without that, a client that came back
        on a new connection would have its beam blanked by the dead-man for its old one.  The server's
        own blank failing is owed: :meth:`check_deadman` queues it again (the dead-man already ended the
        watch it was for), until a blank, stop or a client's unblank works.
        """
        if command.id.startswith(SERVER_ID_PREFIX) and not accepted:
            self.blank_owed = True
            self.owed_pause_s = min(max(2 * self.owed_pause_s, _OWED_FIRST_PAUSE_S), _OWED_MAX_PAUSE_S)
            self._owed_again_at = self._clock() + self.owed_pause_s
        elif accepted:  # (a client's unblank too: the beam is on at a watched client's word now)
            self.blank_owed, self.owed_pause_s = False, 0.0
        taken = self._taken_at.pop(command.id, None)
        if not accepted or taken is None:  # (failed, or the server's own: no client's watch ends)
            return
        for identity in [who for who, watch in self.watches.items() if watch.armed_at < taken]:
            del self.watches[identity]

    def take_urgent_run(self) -> tuple[list[Queued], list[Queued]]:
        """Take the blanks and stops off the queue to be carried out now (during an acquisition).

        Returns the blanks and stops up to the last one queued, and the other commands queued before
        it, which would have run before it in order: run after it they could leave the beam on after
        a client's or the operator's last blank, so they are to be refused (``superseded_by_stop``).
        Commands queued after the last blank or stop keep their place.  Both lists are empty when no
        blank or stop waits.
        """
        if not self._urgent:  # (the worker asks before every job and every 50 ms of a scan: no walk for nothing)
            return [], []
        jobs = list(self._jobs)
        last = max((i for i, job in enumerate(jobs) if job is not None and job[1].kind in URGENT), default=-1)
        head, tail = jobs[: last + 1], jobs[last + 1 :]
        urgent = [job for job in head if job is not None and job[1].kind in URGENT]
        superseded = [job for job in head if job is not None and job[1].kind not in URGENT]
        markers: list[Job] = [job for job in head if job is None]
        self._replace(markers + tail)  # (stop()'s end marker first)
        self.stats["superseded_by_stop"] += len(superseded)
        for _, command in superseded:  # (refused: an unblank among them will not run)
            self._taken_at.pop(command.id, None)
        return urgent, superseded

    # -- clients gone, the dead-man ------------------------------------------------------------------
    def client_gone(self, identity: bytes) -> list[Answer]:
        """A client was forgotten (silent, said bye, unreachable): drop its queued moves, keep its blanks and stops.

        It has given its pending commands up as failed (or will, on its own heartbeat), so none of them
        may run later; the safe ones still do.  Call it once the client no longer counts as registered.
        """
        self.drop(lambda owner, command: owner == identity and command.kind not in URGENT, "dropped_client_gone")
        return self._fold_urgent_runs()  # (its blanks and stops have no owner now; its moves kept others' apart)

    def said_bye(self, identity: bytes) -> list[Answer]:
        """A forgotten client said ``bye``: blank the beam if its commands may have left it on."""
        return self.deadman(identity, "a commanding client said bye") if identity in self.watches else []

    def check_deadman(self) -> list[tuple[bytes, str]]:
        """The dead-man's tick: the blank owed queued again when its pause is over; the silent watched clients.

        Returns each watched client silent for longer than ``deadman_s``, with why, for :meth:`deadman`
        to be called on in turn (its answers sent before the next: a reply that fails forgets a client,
        and the queue is folded then, before the next blank).
        """
        if self.deadman_s is None:
            return []
        if self.blank_owed and self._clock() >= self._owed_again_at and not self._held[None]:
            self.blank_owed = False
            self.stats["deadman_blanks_again"] += 1
            logger.warning("the server's blank failed; blanking the beam again")
            self.blank_next("deadman-again")
        now = self._clock()
        return [
            (identity, f"no message from a commanding client for {now - watch.heard:.1f} s")
            for identity, watch in self.watches.items()
            if now - watch.heard > self.deadman_s
        ]

    def deadman(self, lost: bytes, why: str) -> list[Answer]:
        """Blank the beam for a watched client gone silent (or saying ``bye``).

        Its queued moves are dropped (answered ``refused`` where it is still registered); its blanks
        and stops keep their places: dropped, an unblank of another client queued before one of them
        would run after the server's own blank, which goes to the front.  Other clients' commands
        stay: an unblank of theirs that runs after this blank is theirs to answer for, and they are
        watched on their own.
        """
        self.watches.pop(lost, None)
        refused = self.drop(lambda owner, command: owner == lost and command.kind not in URGENT, "dropped_by_deadman")
        answers = self._fold_urgent_runs()  # (blanks and stops the dropped moves kept apart may now wait side by side)
        self.stats["deadman_blanks"] += 1
        logger.warning("dead-man timer: %s; blanking the beam", why)
        self.blank_next("deadman")
        reason = f"the server blanked the beam (dead-man: {why}) after this command was queued: not carried out"
        for owner, command in refused:
            if owner is not None and self._is_client(owner):
                answers.append((owner, Ack.refusal(command, "refused", reason)))
        return answers

    def blank_next(self, why: str) -> BlankCommand:
        """Queue the server's own blank ahead of every queued job, and return it.

        Its id, ``server-<why>:<hex>``, tells the instrument's log that no client sent it.  It has no
        deadline (the largest the schema allows): a driver busy for longer than a client's deadline
        would otherwise refuse it as expired.
        """
        own = BlankCommand(id=f"{SERVER_ID_PREFIX}{why}:{new_command_id()}", deadline_unix_s=NEVER_UNIX_S)
        self._jobs.appendleft((None, own))
        self._held[None] += 1
        self._urgent += 1
        self._on_job()
        return own

    def close(self) -> None:
        """At the server's stop: drop every waiting command, queue the server's blank and then the end marker."""
        self.drop(lambda _owner, _command: True, "dropped_at_stop")
        self._taken_at.clear()
        self.blank_next("stop")
        self._jobs.append(None)

    def drop(self, drop: Callable[[bytes | None, Command], bool], counter: str) -> list[Queued]:
        """Remove the queued jobs ``drop(identity, command)`` picks, counting them in ``stats[counter]``; those."""
        kept: list[Job] = []
        dropped: list[Queued] = []
        for job in self._jobs:
            if job is not None and drop(*job):
                dropped.append(job)
            else:
                kept.append(job)
        if dropped:
            self.stats[counter] += len(dropped)
            for _, command in dropped:  # (its number goes with it: an unblank dropped never runs)
                self._taken_at.pop(command.id, None)
            self._replace(kept)
        return dropped

    # -- inside --------------------------------------------------------------------------------------
    def _append(self, job: Queued) -> None:
        self._jobs.append(job)
        self._held[job[0]] += 1
        self._urgent += job[1].kind in URGENT
        self._on_job()

    def _replace(self, jobs: list[Job]) -> None:
        self._jobs = deque(jobs)
        self._held = Counter(job[0] for job in jobs if job is not None)
        self._urgent = sum(job is not None and job[1].kind in URGENT for job in jobs)

    def _fold_urgent_runs(self, start: int = 0, across: bool = False) -> list[Answer]:
        """Fold like ``blank`` and ``stop`` jobs that wait side by side into one each; the ``busy`` answers to send.

        Within a run of queued jobs that are all blanks and stops (from ``start`` on, which must begin
        a run), order does not matter: both are idempotent, neither undoes the other, and neither
        expires.  So while a client holds more than ``max_per_client`` jobs, its newer one of a kind
        takes the place of its earliest there, and the one displaced is answered ``busy``.  Those of
        gone clients and the server's own are dropped where an earlier one of their kind waits in the
        run, without an answer.  ``across`` (the queue holds more than ``max_total``): the same across
        clients, whatever each holds.  A client within the bound is otherwise left as it is.  This
        bounds a client's blanks and stops beyond the bound to one of each between any two other
        waiting commands.
        """
        jobs = list(self._jobs)
        kept: list[Job] = jobs[:start]
        held_by = Counter(self._held)
        displaced: list[tuple[bytes, Command, Command]] = []  # (client, the one answered busy, the one in its place)
        first: dict[tuple[str, bytes | None], int] = {}  # (kind, live owner or None) -> its place in ``kept``
        for job in jobs[start:]:
            if job is None or job[1].kind not in URGENT:
                first.clear()
                kept.append(job)
                continue
            owner, command = job
            live = owner if owner is not None and self._is_client(owner) else None
            # (the server's own keep a key of their own: a client's blank taking one's place would leave
            # nobody to blank again if it failed)
            key = (command.kind, _OWN if owner is None else (None if across else live))
            foldable = across or live is None or held_by[live] > self.max_per_client
            if key not in first or not foldable:
                first.setdefault(key, len(kept))
                kept.append(job)
                continue
            place = first[key]
            held_owner, held = kept[place]  # type: ignore[misc]
            if live is None:  # nobody waits for its answer: the earlier one does what it would
                self.stats["folded_without_an_owner"] += 1
                self._pass_number(command, held)
                continue
            kept[place] = (live, command)
            self._pass_number(held, command)
            if held_owner is not None and self._is_client(held_owner):
                held_by[held_owner] -= 1
                displaced.append((held_owner, held, command))
            else:
                self.stats["folded_without_an_owner"] += 1
        if len(kept) == len(jobs):
            return []
        self._replace(kept)
        answers: list[Answer] = []
        for client, held, command in displaced:
            self._seen.pop(held.id, None)  # (answered busy: it may be sent again)
            self.stats["replaced_by_a_later_one"] += 1
            reason = f"the {command.kind} {command.id} sent after it takes its place in the queue"
            answers.append((client, Ack.refusal(held, "busy", reason)))
        return answers

    def _pass_number(self, gone: Command, staying: Command) -> None:
        """Fold the taking number of the blank or stop ``gone`` into that of ``staying``, the later of the two.

        They wait in one run of blanks and stops, so every command taken before either has run or waits
        before both: the one that stays may end the watches the later number would.
        """
        number = self._taken_at.pop(gone.id, None)
        if number is not None:
            self._taken_at[staying.id] = max(number, self._taken_at.get(staying.id, 0))

    def _last_run_start(self) -> int:
        """Where the run of blanks and stops at the end of the queue begins (its length: none there)."""
        i = len(self._jobs)
        while i > 0 and (job := self._jobs[i - 1]) is not None and job[1].kind in URGENT:
            i -= 1
        return i
