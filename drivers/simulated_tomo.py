"""A simulated tomography holder: set-tilt, then a scan returns the projection of a 3-D phantom."""

from __future__ import annotations

import time

import numpy as np

from drivers.base import Ack, Capabilities, Command, CommandRefused, Frame, Range, ScanCommand
from drivers.local import LocalInstrument


class SimulatedTiltDriver(LocalInstrument):
    """An instrument over :mod:`simulators.phantom` and :mod:`simulators.tilt`.

    Parameters
    ----------
    phantom_seed, size_px
        The phantom (a cube of ``size_px`` voxels of ``voxel_nm``).
    voxel_nm
        Voxel edge: the projection's field of view is ``size_px * voxel_nm``.
    noise_seed
        Seed of the counting noise.
    reachable_deg
        The holder's tilt range.
    dose_e_per_px
        Electrons per pixel per projection at a dwell of 1 us (scaled by the scan's dwell).

    A scan must ask for the whole projection (``size_px`` square, the fixed field of view, centred at
    (0, 0), unrotated); the capabilities say so, and anything else is refused with the reason.
    """

    #: The dwell at which a projection receives ``dose_e_per_px``.
    REFERENCE_DWELL_US = 1.0

    def __init__(
        self,
        phantom_seed: int = 0,
        size_px: int = 128,
        voxel_nm: float = 0.5,
        noise_seed: int = 0,
        reachable_deg: tuple[float, float] = (-70.0, 70.0),
        dose_e_per_px: float = 2000.0,
    ) -> None:
        from simulators.phantom import PhantomConfig, make_phantom
        from simulators.tilt import TiltImaging

        self.phantom = make_phantom(PhantomConfig(seed=phantom_seed, size_px=size_px))
        self.imaging = TiltImaging(dose_e_per_px=dose_e_per_px, reachable_deg=reachable_deg)
        self.fov_nm = size_px * voxel_nm
        self._rng = np.random.default_rng([noise_seed, phantom_seed, 0x70])
        half = self.fov_nm / 2
        super().__init__(
            Capabilities(
                instrument=f"simulated tomography holder (phantom seed {phantom_seed}, {size_px}^3 voxels)",
                command_kinds=("scan", "set_tilt", "blank", "unblank", "stop"),
                stage_x_nm=Range(low=-half, high=half),  # the field's extent; its centre must be (0, 0)
                stage_y_nm=Range(low=-half, high=half),
                fov_nm=Range(low=self.fov_nm, high=self.fov_nm),
                pixels=Range(low=size_px, high=size_px),
                dwell_us=Range(low=0.1, high=1000.0),
                tilt_deg=Range(low=reachable_deg[0], high=reachable_deg[1]),
                max_dose_e_per_a2=1e9,
            )
        )

    def send(self, command: Command, timeout_s: float = 5.0) -> Ack:
        """As :meth:`LocalInstrument.send`; an off-centre or rotated scan is refused (projections are neither)."""
        if isinstance(command, ScanCommand) and (command.x_nm, command.y_nm) != (0.0, 0.0):
            reason = "this holder records the whole phantom, centred: the scan's centre must be (0, 0)"
            raise CommandRefused(Ack.refusal(command, "refused", reason))
        if isinstance(command, ScanCommand) and command.rotation_deg % 360.0 != 0.0:
            raise CommandRefused(Ack.refusal(command, "refused", "this holder records unrotated projections only"))
        return super().send(command, timeout_s)

    def _acquire(self, command: ScanCommand) -> Frame:
        """The projection at the current tilt, its dose scaled by the scan's dwell."""
        from simulators.tilt import record_projection

        start = time.time()
        dose = self.imaging.dose_e_per_px * command.dwell_us / self.REFERENCE_DWELL_US
        imaging = self.imaging.model_copy(update={"dose_e_per_px": dose})
        counts, _ = record_projection(self.phantom.volume, self.state.tilt_deg, imaging, self._rng)
        metadata = {
            "simulated": True,
            "projection": True,
            "dose_e_per_px": dose,
            "background": self.imaging.background,
            "signal_per_voxel": self.imaging.signal_per_voxel,
            "phantom_seed": self.phantom.config.seed,
        }
        return Frame(self.state.scan_header(command, start, metadata), counts)
