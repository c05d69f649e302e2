"""``raster``: a serpentine sweep over the candidate grid (the baseline every microscopist knows)."""

from __future__ import annotations

import numpy as np

from agent.guard import Decision
from agent.policies.base import CandidatePolicy, PolicyContext


class RasterPolicy(CandidatePolicy):
    """Visit the candidate fields row by row, alternating direction, from the region's lower-left corner.

    Its decisions do not depend on what it sees, so it commits ahead.
    """

    name = "raster"
    commits_ahead = True

    def __init__(self, context: PolicyContext) -> None:
        super().__init__(context)
        xs, ys = np.unique(self.xy[:, 0]), np.unique(self.xy[:, 1])
        order: list[int] = []
        for j, y in enumerate(ys):
            row = np.flatnonzero(self.xy[:, 1] == y)
            row = row[np.argsort(self.xy[row, 0])]
            order.extend((row[::-1] if j % 2 else row).tolist())
        self._order = np.array(order, dtype=np.int64)
        self._place = np.argsort(self._order)  # candidate index -> its place in the sweep
        self._next = 0
        self._columns = len(xs)

    def release(self, decision: Decision) -> None:
        """Open the field again and take the sweep back to it: it stays the next suggestion until visited."""
        i = self._reopen(decision)
        if i is not None:
            self._next = min(self._next, int(self._place[i]))

    def suggest(self, n: int = 1) -> list[Decision]:
        """The next ``n`` open fields of the sweep.

        Where the next open field lies beyond one stage move (after a refused stretch of the sweep), the
        nearest open field in reach comes first, and the farther ones wait (the guard would refuse them
        now, which closed them for good, one after another, and could end the run).
        """
        out: list[Decision] = []
        while len(out) < n:
            i = self._next_field()
            if i is None:
                break
            out.append(self.decide(i, order=int(self._place[i])))
        return out

    def _next_field(self) -> int | None:
        """The sweep's next open field; where it is out of reach, the nearest open field in reach."""
        while self._next < len(self._order) and not self.open[self._order[self._next]]:
            self._next += 1
        ahead = self._order[self._next :]
        if not ahead.size:
            return None
        reachable = ahead[self.choosable()[ahead]]
        here = self._planned or self.position
        if here is None or not reachable.size or reachable[0] == ahead[0]:
            return int(ahead[0])
        distance = np.hypot(self.xy[reachable, 0] - here[0], self.xy[reachable, 1] - here[1])
        return int(reachable[int(np.argmin(distance))])  # ties: the earliest in the sweep
