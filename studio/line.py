"""The line of generations waiting for the engine: fair between users, bounded, each told its place. No gradio, no
torch.

Fair: the waiting generations are taken round-robin by owner (a signed-in user, else a browser or an API client),
not first come first served. Each generation gets a round when it joins: the round now running, or one past its
owner's last one, whichever is later; the line runs them by round, then by arrival. One person's ten waiting
images take ten rounds, so another's one waits behind at most one of each other user's.
`max_per_owner` caps how many one owner may have waiting. A full line is fair too: a user with nothing waiting
gets the place of the newest waiting generation of the user with the most (at least two) waiting, who is told
why; only when nobody has two waiting is the newcomer told the server is busy."""

from __future__ import annotations

import collections
import itertools
import threading
import time

from engine.request import UserError


class Busy(UserError):
    """The line of waiting generations is full."""


class Ride:
    """A waiting generation taken into another's pipeline call (batching): its result, or error, when that call
    ends, and the call's progress meanwhile."""

    def __init__(self):
        self.done = threading.Event()
        self.result, self.error = None, None
        self.step = (-1, 0)  # the batch's (step, total)

    def finish(self, result=None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


RIDING = -1  # what `wait` says of a ticket taken into another's batch


class Line:
    """Generations wait here for the engine, round-robin by owner, at most `max_waiting` of them (and
    `max_per_owner` of one owner's); `slots` run at once (1 for the local engine, N for N Ray Serve replicas).

    Only generations queue: gradio's own queue (whose "full" refuses every event, page loads too) never fills,
    because generating events start at once and wait here, where they can be cancelled and told their place.
    """

    def __init__(self, max_waiting: int = 16, slots: int = 1, abandon_s: float = 20.0, max_per_owner: int = 0):
        if slots < 1:
            raise ValueError(f"a line needs at least one slot, not {slots}")
        self.max_waiting, self.slots, self.abandon_s = max_waiting, slots, abandon_s
        self.max_per_owner = max_per_owner  # 0: no cap
        self._owners: dict[object, object] = {}  # ticket -> its owner (a ticket of its own when none is given)
        self._order = itertools.count()
        self._joined: dict[object, tuple[int, int]] = {}  # ticket -> (its round, when it came)
        self._round = 0  # the round of the last generation whose turn came
        self._last: dict[object, int] = {}  # owner -> the round of its last ticket in the line
        self._requests: dict[object, tuple] = {}  # ticket -> (its request, its batch key), when it may batch
        self._rides: dict[object, Ride] = {}  # ticket -> its Ride, once taken into another's batch
        self._turns: collections.deque = collections.deque()  # the running tickets first, then the waiting ones
        self._seen: dict[object, float] = {}  # ticket -> when its owner last asked for its place
        self._started: set = set()  # tickets whose owner saw its turn come (their worker leaves the line)
        self._switches: dict[object, object] = {}  # ticket -> its run's stop switch (an Event): set, it leaves
        self._bumped: dict[object, int] = {}  # ticket -> how many its owner had waiting when it gave its place
        self._changed = threading.Condition()
        self.served = 0  # tickets that reached the engine, for the load benchmark's fairness count

    def join(self, switch=None, owner: str | None = None, request=None, batch=None) -> object:
        """A ticket in the line, placed fairly among the owners; `Busy` (with how many wait) when the line is full
        or `owner` has `max_per_owner` waiting already. `switch`: the run's stop switch (an Event); once it is set
        the ticket leaves the line, whether or not its owner still asks (a cancelled event whose generator gradio
        could not close never asks again). `request` and its `batch` key (engine.batch): what another run may take
        it along for (`take_riders`)."""
        with self._changed:
            waiting = self.waiting
            mine = [t for t in self._turns if owner is not None and self._owners.get(t) == owner
                    and t not in self._started]
            if waiting >= self.max_waiting and not (owner is not None and not mine and self._bump()):
                raise Busy(f"The server is busy: {waiting} generations are waiting for the engine (at most "
                           f"{self.max_waiting} may wait). Try again in a minute.")
            if self.max_per_owner and len(mine) >= self.max_per_owner:
                raise Busy(f"You have {len(mine)} generations waiting already (at most {self.max_per_owner} each "
                           "on this server, so everyone gets a turn). Send this one when one of yours is done.")
            ticket = object()
            key = owner if owner is not None else ticket
            self._owners[ticket] = key
            turn = max(self._round, self._last.get(key, -1) + 1)
            self._last[key] = turn
            self._joined[ticket] = (turn, next(self._order))
            self._turns.append(ticket)
            self._seen[ticket] = time.monotonic()
            if switch is not None:
                self._switches[ticket] = switch
            if request is not None and batch is not None:
                self._requests[ticket] = (request, batch)
            self._reorder()
            return ticket

    def _bump(self) -> bool:
        """Make room in a full line (under the lock): the newest waiting ticket of the owner with the most waiting,
        if they have two or more, leaves it (its `wait` says why). False when nobody has two waiting."""
        waiting = [t for t in self._turns if t not in self._started and t not in self._rides]
        counts = collections.Counter(self._owners[t] for t in waiting)  # an anonymous ticket is its own owner
        if not counts:
            return False
        owner, most = counts.most_common(1)[0]
        if most < 2:
            return False
        newest = max((t for t in waiting if self._owners[t] == owner), key=lambda t: self._joined[t][1])
        self._drop(newest)
        self._bumped[newest] = most
        self._changed.notify_all()
        return True

    def take_riders(self, ticket, batch, limit: int) -> list[tuple[object, object, Ride, object]]:
        """Up to `limit` waiting generations, in line order, of the batch key `batch` (`ticket`'s, which runs now):
        out of the line and into `ticket`'s pipeline call. (ticket, request, Ride, its stop switch)."""
        taken = []
        with self._changed:
            for other in list(self._turns):
                if len(taken) >= limit:
                    break
                if other is ticket or other in self._started or other not in self._requests:
                    continue
                if self._stopped(other) or self._requests[other][1] != batch:
                    continue
                ride, request = Ride(), self._requests[other][0]
                self._rides[other] = ride
                switch = self._drop(other)
                taken.append((other, request, ride, switch))
            if taken:
                self.served += len(taken)
                self._changed.notify_all()
        return taken

    def stop_all(self) -> int:
        """Set every generation's stop switch, waiting or running (an admin's stop-all); how many there were."""
        with self._changed:
            switches = [s for s in self._switches.values() if s is not None]
        for switch in switches:
            switch.set()
        return len(switches)

    def owners_waiting(self) -> dict:
        """owner -> how many of theirs wait (an admin's view of the line; no prompts)."""
        with self._changed:
            counts = collections.Counter(self._owners.get(t) for t in self._turns if t not in self._started)
        return {(o if isinstance(o, str) else "anonymous"): n for o, n in counts.items()}

    def ride(self, ticket) -> Ride | None:
        """The Ride of a ticket taken into a batch (None: it was not)."""
        with self._changed:
            return self._rides.get(ticket)

    def done_riding(self, ticket) -> None:
        with self._changed:
            self._rides.pop(ticket, None)

    def _reorder(self) -> None:
        """The waiting tickets by (round, arrival) (under the lock); those whose turn has come keep their places
        at the front."""
        started = [t for t in self._turns if t in self._started]
        rest = sorted((t for t in self._turns if t not in self._started), key=self._joined.__getitem__)
        self._turns = collections.deque(started + rest)

    def wait(self, ticket: object, timeout: float) -> int:
        """0 when it is `ticket`'s turn, else how many wait before it after `timeout` seconds. A ticket whose owner
        stopped asking for `abandon_s` (its event was cancelled without being closed, its client gone) loses its
        place, so it never holds up the line; its owner, should it come back, is told to send again."""
        with self._changed:
            self._seen[ticket] = time.monotonic()
            self._sweep(keep=ticket)
            self._changed.wait_for(lambda: ticket not in self._turns or self._turns.index(ticket) < self.slots,
                                   timeout)
            if ticket in self._rides:
                return RIDING
            if ticket in self._bumped:
                had = self._bumped.pop(ticket)
                raise Busy(f"The line was full and you had {had} generations waiting: your newest one gave its place "
                           "to someone with none waiting, so that everyone gets a turn. Send it again when one of "
                           "yours is done.")
            if ticket not in self._turns:
                raise Busy("This generation lost its place in line after its page stopped asking for it. Send it "
                           "again.")
            self._seen[ticket] = time.monotonic()
            place = max(0, self._turns.index(ticket) - self.slots + 1)
            if place == 0:
                self._started.add(ticket)
                self._round = max(self._round, self._joined[ticket][0])
            return place

    def leave(self, ticket: object) -> None:
        with self._changed:
            if ticket in self._turns:
                if self._turns.index(ticket) < self.slots:
                    self.served += 1
                self._turns.remove(ticket)
            self._seen.pop(ticket, None)
            self._started.discard(ticket)
            self._switches.pop(ticket, None)
            self._bumped.pop(ticket, None)
            self._forget(ticket)
            self._reorder()
            self._changed.notify_all()

    def _drop(self, ticket):
        """Take a waiting ticket out of the line (under the lock): its place, its owner and round; its stop switch."""
        self._turns.remove(ticket)
        self._seen.pop(ticket, None)
        switch = self._switches.pop(ticket, None)
        self._forget(ticket)
        return switch

    def _forget(self, ticket) -> None:
        """Drop a ticket's owner and round (under the lock); an owner with none left in line starts afresh."""
        owner = self._owners.pop(ticket, None)
        self._joined.pop(ticket, None)
        self._requests.pop(ticket, None)
        if owner is not None and owner not in self._owners.values():
            self._last.pop(owner, None)

    def _sweep(self, keep: object, stopped_only: bool = False) -> None:
        """Drop the waiting tickets, other than `keep`, nobody has asked about for `abandon_s` (under the lock)."""
        now = time.monotonic()
        stale = [t for t in self._turns if t is not keep and t not in self._started
                 and ((not stopped_only and now - self._seen.get(t, now) > self.abandon_s) or self._stopped(t))]
        for ticket in stale:
            self._drop(ticket)
        if stale:
            self._changed.notify_all()

    def _stopped(self, ticket) -> bool:
        switch = self._switches.get(ticket)
        return switch is not None and switch.is_set()

    @property
    def waiting(self) -> int:
        with self._changed:
            self._sweep(keep=None, stopped_only=True)  # a stopped ticket nobody asks about any more is not waiting
            return max(0, len(self._turns) - self.slots)
