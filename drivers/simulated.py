"""A simulated STEM instrument: obeys commands, renders the requested field, accumulates dose."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from drivers.base import (
    Ack,
    Capabilities,
    Command,
    Disconnected,
    Frame,
    Range,
    ScanCommand,
)
from drivers.local import BeamState, FrameQueue


class SimulatedDriver:
    """An instrument over :mod:`simulators`: a specimen, a beam, a stage, a tilt holder.

    Parameters
    ----------
    specimen_seed
        Seed of the simulated specimen.
    lattice
        Lattice of the specimen (``MoS2``, ``WS2``, ``graphene``, ``SrTiO3``).
    noise_seed
        Seed of the frames' noise and scan distortion.
    probe_current_pa
        Beam current.
    max_dose_e_per_a2
        Largest dose one frame may deliver; larger requests are refused.
    realtime
        When True, a scan takes as long as its dwell time implies.
    specimen_config
        Extra :class:`simulators.SpecimenConfig` fields.
    """

    def __init__(
        self,
        specimen_seed: int = 0,
        lattice: str = "MoS2",
        noise_seed: int = 0,
        probe_current_pa: float = 20.0,
        max_dose_e_per_a2: float = 1e7,
        realtime: bool = False,
        specimen_config: dict[str, Any] | None = None,
    ) -> None:
        from simulators import ImagingParams, Specimen, SpecimenConfig

        self.specimen = Specimen(SpecimenConfig(seed=specimen_seed, lattice=lattice, **(specimen_config or {})))
        self.imaging = ImagingParams(probe_current_pa=probe_current_pa)
        self._rng = np.random.default_rng([noise_seed, specimen_seed])
        x0, x1, y0, y1 = self.specimen.bounds_nm
        self._cap = Capabilities(
            instrument=f"simulated STEM ({lattice}, specimen seed {specimen_seed})",
            command_kinds=("scan", "set_tilt", "blank", "unblank", "stop"),
            stage_x_nm=Range(low=x0, high=x1),
            stage_y_nm=Range(low=y0, high=y1),
            fov_nm=Range(low=0.5, high=min(x1 - x0, 2000.0)),
            pixels=Range(low=16, high=4096),
            dwell_us=Range(low=0.1, high=1000.0),
            tilt_deg=Range(low=-70.0, high=70.0),
            max_dose_e_per_a2=max_dose_e_per_a2,
        )
        self.realtime = realtime
        self.state = BeamState()
        self.commands_executed = 0
        self._frames = FrameQueue()
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._frames.closed

    def capabilities(self) -> Capabilities:
        """Limits derived from the specimen and the simulated column."""
        return self._cap

    def _dose(self, command: ScanCommand) -> float:
        from simulators import ScanRequest

        scan = ScanRequest(fov_nm=command.fov_nm, rows=command.rows, cols=command.cols, dwell_us=command.dwell_us)
        return self.imaging.dose_e_per_a2(scan)

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        """Execute a command (a scan renders its frame before returning)."""
        if self.closed:
            raise Disconnected("simulated instrument is closed")
        with self._lock:
            self.state.admit(self._cap, command)  # fields first: the dose needs valid ones
            if isinstance(command, ScanCommand):
                self.state.admit(self._cap, command, self._dose(command))
                self._frames.put(self._scan(command))
            else:
                self.state.apply(command)
            self.commands_executed += 1
        return Ack.accept(command)

    def _scan(self, command: ScanCommand) -> Frame:
        from simulators import ScanRequest, render_frame

        start = time.time()
        scan = ScanRequest(
            x_nm=command.x_nm,
            y_nm=command.y_nm,
            fov_nm=command.fov_nm,
            rows=command.rows,
            cols=command.cols,
            dwell_us=command.dwell_us,
            rotation_deg=command.rotation_deg,
        )
        sim = render_frame(self.specimen, scan, self.imaging, self._rng)
        if self.realtime:
            time.sleep(max(0.0, command.duration_s - (time.time() - start)))
        metadata: dict[str, Any] = {
            "dose_e_per_a2": sim.dose_e_per_a2,
            "rotation_deg": command.rotation_deg,
            "probe_current_pa": self.imaging.probe_current_pa,
            "simulated": True,
            "atoms_resolved": sim.truth.atoms_resolved,
        }
        if sim.truth.atoms_resolved:
            metadata["truth"] = _truth_defects(sim.truth.columns.defects(), self.specimen.lattice.nn_spacing_nm)
        header = self.state.scan_header(command, start, metadata)
        return Frame(header, sim.image)

    def next_frame(self, timeout_s: float) -> Frame:
        """The oldest unread frame; raises :class:`DriverTimeout` after ``timeout_s``."""
        return self._frames.get(timeout_s)

    def close(self) -> None:
        """Close the instrument and blank the beam; blocked and later calls raise :class:`Disconnected`."""
        self.state.blanked = True
        self._frames.close()


#: Most ground-truth defects listed in one frame's metadata (a resolved field holds far fewer).
MAX_TRUTH_DEFECTS = 20_000


def _truth_defects(defects: Any, nn_spacing_nm: float) -> dict[str, Any]:
    """The planted defects of a frame, for scoring runs (never for deciding).

    Positions in the frame's own pixels and on the stage, kind labels, and the lattice's nearest-neighbour
    spacing.
    """
    from simulators.defects import DefectKind

    n = min(len(defects), MAX_TRUTH_DEFECTS)
    return {
        "nn_spacing_nm": nn_spacing_nm,
        "defects": {
            "row": np.round(defects.row[:n], 3).tolist(),
            "col": np.round(defects.col[:n], 3).tolist(),
            "x_nm": np.round(defects.x_nm[:n], 4).tolist(),
            "y_nm": np.round(defects.y_nm[:n], 4).tolist(),
            "kind": [DefectKind(int(k)).label for k in defects.kind[:n]],
        },
    }
