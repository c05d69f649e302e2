"""What every policy shares: the protocol, the field template, the allowed region and its candidate grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.guard import Decision
from agent.observation import Observation


@dataclass(frozen=True)
class FieldTemplate:
    """The high-resolution field every scan decision uses (policies choose where, not how)."""

    fov_nm: float = 10.24
    pixels: int = 512
    dwell_us: float = 10.0
    rotation_deg: float = 0.0

    def at(self, x_nm: float, y_nm: float, **rationale: object) -> Decision:
        """A scan decision for this field centred at (x_nm, y_nm)."""
        return Decision(
            "scan",
            float(x_nm),
            float(y_nm),
            self.fov_nm,
            self.pixels,
            self.pixels,
            self.dwell_us,
            self.rotation_deg,
            rationale=dict(rationale),
        )


@dataclass(frozen=True)
class Region:
    """The stage area field centres may lie in, nm."""

    x_min_nm: float
    x_max_nm: float
    y_min_nm: float
    y_max_nm: float

    def __post_init__(self) -> None:
        values = (self.x_min_nm, self.x_max_nm, self.y_min_nm, self.y_max_nm)
        if not all(math.isfinite(v) for v in values) or self.x_min_nm > self.x_max_nm or self.y_min_nm > self.y_max_nm:
            raise ValueError(f"region {values} is not a finite box with min <= max")

    @property
    def center_nm(self) -> tuple[float, float]:
        """The region's centre."""
        return 0.5 * (self.x_min_nm + self.x_max_nm), 0.5 * (self.y_min_nm + self.y_max_nm)

    @property
    def size_nm(self) -> tuple[float, float]:
        """Width and height."""
        return self.x_max_nm - self.x_min_nm, self.y_max_nm - self.y_min_nm


#: Most candidate fields a policy keeps (their GP inputs and scores are arrays of this length).
MAX_CANDIDATES = 4_000_000


def candidate_grid(region: Region, spacing_nm: float) -> np.ndarray:
    """Field centres on a square grid of pitch ``spacing_nm`` covering ``region``, row by row.

    Returns
    -------
    ndarray, shape (n, 2), float64: (x_nm, y_nm) of each candidate; the rows of the grid run along x.

    Raises
    ------
    ValueError
        A spacing that is not positive and finite, or a grid of more than ``MAX_CANDIDATES`` fields.
    """
    if not (math.isfinite(spacing_nm) and spacing_nm > 0):
        raise ValueError(f"spacing_nm must be a positive finite number (got {spacing_nm!r})")
    width, height = region.size_nm
    count = (width / spacing_nm + 1.0) * (height / spacing_nm + 1.0)  # (a float: inf for an absurd spacing)
    if count > MAX_CANDIDATES:
        raise ValueError(
            f"a {width:g} x {height:g} nm region at a spacing of {spacing_nm:g} nm is {count:.3g} candidate fields,"
            f" more than {MAX_CANDIDATES:,}: narrow the region (region_x_nm, region_y_nm) or widen spacing_nm"
        )
    nx, ny = max(1, int(width // spacing_nm) + 1), max(1, int(height // spacing_nm) + 1)
    # centre the grid in the region so both margins are equal
    xs = region.x_min_nm + 0.5 * (width - (nx - 1) * spacing_nm) + spacing_nm * np.arange(nx)
    ys = region.y_min_nm + 0.5 * (height - (ny - 1) * spacing_nm) + spacing_nm * np.arange(ny)
    gx, gy = np.meshgrid(xs, ys)
    return np.column_stack([gx.ravel(), gy.ravel()])


@dataclass(frozen=True)
class PolicyContext:
    """Everything a policy is built from (no sockets, files or models: those belong to the loop)."""

    region: Region
    field: FieldTemplate
    seed: int = 0
    spacing_nm: float | None = None  # candidate pitch; the field of view when None (fields just touch)
    max_step_nm: float | None = None  # the guard's longest stage move: farther fields are not chosen yet
    centres_nm: tuple[tuple[float, float], ...] | None = None  # given candidates, in place of the grid

    def candidates(self) -> np.ndarray:
        """The candidate field centres, shape (n, 2): the given ``centres_nm``, else a grid over the region.

        Raises
        ------
        ValueError
            A given centre outside the region (fields there would reach beyond the stage or the region).
        """
        if self.centres_nm is None:
            return candidate_grid(self.region, self.spacing_nm or self.field.fov_nm)
        r = self.region
        outside = [
            c for c in self.centres_nm if not (r.x_min_nm <= c[0] <= r.x_max_nm and r.y_min_nm <= c[1] <= r.y_max_nm)
        ]
        if outside:
            raise ValueError(
                f"field centres {outside[:3]} lie outside the region where a {self.field.fov_nm:g} nm field fits "
                f"(x {r.x_min_nm:g} to {r.x_max_nm:g}, y {r.y_min_nm:g} to {r.y_max_nm:g} nm)"
            )
        return np.asarray(self.centres_nm, dtype=np.float64).reshape(-1, 2)


class Policy(Protocol):
    """Proposes where to look next.

    ``commits_ahead`` is True when the next decisions do not depend on the observations still to come
    (a raster): the loop may then send the next scan before the current frame is analysed.
    """

    name: str
    commits_ahead: bool

    def ingest(self, observation: Observation) -> None:
        """Learn from one analysed frame."""

    def suggest(self, n: int = 1) -> list[Decision]:
        """Up to ``n`` next decisions, best first (empty when the policy has nothing left to propose)."""

    def reject(self, decision: Decision, reason: str) -> None:
        """A suggested decision was refused (guard or instrument) or its frame was lost: do not propose it again."""

    def release(self, decision: Decision) -> None:
        """A suggestion no one will act on for sure (advice to a person, in watch mode): it may be proposed again.

        A field visited or refused meanwhile stays closed.
        """


class CandidatePolicy:
    """Shared bookkeeping for policies choosing among grid candidates: visited and blocked fields."""

    name = "candidates"
    commits_ahead = False

    def __init__(self, context: PolicyContext) -> None:
        self.context = context
        self.xy = context.candidates()
        self.open = np.ones(len(self.xy), dtype=bool)  # neither visited nor refused nor suggested
        self._only_suggested: set[int] = set()  # closed by a suggestion alone: released, they open again
        self.position: tuple[float, float] | None = None
        self._planned: tuple[float, float] | None = None  # the latest suggestion: where the stage goes next

    def choosable(self) -> np.ndarray:
        """Open fields within one stage move (``max_step_nm``) of where the stage is going.

        That is the latest suggestion (a policy that commits ahead plans from it), else the last field seen.

        A field farther away stays open for later (the guard would refuse it now, which used to close it
        for good).  All open fields where there is no step limit, no position yet, or none is near.
        """
        limit, here = self.context.max_step_nm, self._planned or self.position
        if limit is None or here is None:
            return self.open
        near = np.hypot(self.xy[:, 0] - here[0], self.xy[:, 1] - here[1]) <= limit
        mask = self.open & near
        return mask if mask.any() else self.open

    def _index_of(self, x_nm: float, y_nm: float) -> int:
        return int(np.argmin(np.hypot(self.xy[:, 0] - x_nm, self.xy[:, 1] - y_nm)))

    def _candidate_at(self, x_nm: float, y_nm: float) -> int | None:
        """The candidate whose field holds (x_nm, y_nm) near its centre (within half a field), if any."""
        i = self._index_of(x_nm, y_nm)
        near = math.hypot(self.xy[i, 0] - x_nm, self.xy[i, 1] - y_nm) < 0.5 * self.context.field.fov_nm
        return i if near else None

    def _close(self, x_nm: float, y_nm: float) -> None:
        i = self._candidate_at(x_nm, y_nm)
        if i is not None:
            self.open[i] = False
            self._only_suggested.discard(i)

    def ingest(self, observation: Observation) -> None:
        """Mark the observed field's candidate as visited."""
        h = observation.header
        if abs(h.fov_nm - self.context.field.fov_nm) < 1e-6:
            self._close(h.x_nm, h.y_nm)
            self.position = (h.x_nm, h.y_nm)

    def reject(self, decision: Decision, reason: str) -> None:
        """Never propose this field again."""
        self._close(decision.x_nm, decision.y_nm)
        self._planned = None  # the stage did not go there

    def release(self, decision: Decision) -> None:
        """Open the suggested field again, unless it was visited or refused since."""
        self._reopen(decision)
        self._planned = None  # no one took it: the stage stays

    def _reopen(self, decision: Decision) -> int | None:
        """:meth:`release`, returning the index of the candidate it opened again (None: none)."""
        i = self._candidate_at(decision.x_nm, decision.y_nm)
        if i is None or i not in self._only_suggested:
            return None
        self._only_suggested.discard(i)
        self.open[i] = True
        return i

    def decide(self, index: int, **rationale: object) -> Decision:
        """The decision for candidate ``index`` (closed at once, so it is never proposed twice unless released)."""
        if self.open[index]:
            self._only_suggested.add(index)
        self.open[index] = False
        self._planned = (float(self.xy[index, 0]), float(self.xy[index, 1]))
        return self.context.field.at(self.xy[index, 0], self.xy[index, 1], **rationale)
