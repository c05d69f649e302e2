"""Nion's STEM simulator (nionswift-usim), headless, as the vendor's own tests set it up.

:class:`UsimHost` starts Nion's hardware-source machinery with a configuration folder, registers usim's
instrument and scan device (no cameras: their threads would outlive the process) and hands out the STEM
controller and the scan hardware source for :class:`~drivers.nion.NionDriver`; ``stop`` unregisters
them so every thread ends.  Start and stop it on the main thread: Nion's scan source needs the main
thread's event loop when it is created.

usim's own samples hold no atoms.  :class:`SpecimenScanData` makes usim scan one of our simulated
specimens instead (each field rendered by :mod:`simulators` where usim says the beam is), and
:class:`PeriodicImageScanData` tiles any periodic image, such as an abTEM multislice cell.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from drivers.nion import require_nion

USIM_INSTRUMENT_ID = "usim_stem_controller"
USIM_SCAN_ID = "usim_scan_device"


def _specimen_points_nm(instrument: Any, sfp: Any) -> tuple[np.ndarray, np.ndarray]:
    """Specimen coordinates (x, y) in nm of every pixel centre of the frame usim is about to scan.

    Pixel (r, c) sits at u = (c - (w-1)/2) p, v = (r - (h-1)/2) p with p = fov / rows (Nion's fov spans
    the rows), rotated by the scan rotation and placed at ``center - (stage - beam shift)``: the
    geometry usim's own sample renderer uses.
    """
    h, w = int(sfp.size.height), int(sfp.size.width)
    pixel_nm = float(sfp.fov_nm) / h
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (u - (w - 1) / 2) * pixel_nm
    v = (v - (h - 1) / 2) * pixel_nm
    c, s = math.cos(sfp.rotation_rad), math.sin(sfp.rotation_rad)
    offset = instrument.value_manager.actual_offset_m
    x0 = float(sfp.center_nm.x) - 1e9 * float(offset.x)
    y0 = float(sfp.center_nm.y) - 1e9 * float(offset.y)
    return x0 + c * u - s * v, y0 + s * u + c * v


class PeriodicImageScanData:
    """usim scan data from a periodic image (one cell of a crystal), tiled over the whole specimen.

    Parameters
    ----------
    image
        (H, W) intensities; pixel (r, c) lies at specimen (x, y) = (c, r) * ``pixel_size_nm``.
    pixel_size_nm
        The image's sampling.
    counts_per_us
        Mean detector counts per microsecond of dwell at intensity 1 (Poisson noise).
    seed
        Noise seed.
    """

    def __init__(self, image: np.ndarray, pixel_size_nm: float, counts_per_us: float = 50.0, seed: int = 0) -> None:
        self.image = np.asarray(image, dtype=np.float64)
        self.pixel_size_nm = pixel_size_nm
        self.counts_per_us = counts_per_us
        self._rng = np.random.default_rng(seed)

    def generate_scan_data(self, instrument: Any, sfp: Any) -> np.ndarray:
        """The frame usim asked for (usim's scan-data protocol)."""
        x_nm, y_nm = _specimen_points_nm(instrument, sfp)
        clean = ndimage.map_coordinates(
            self.image, [y_nm / self.pixel_size_nm, x_nm / self.pixel_size_nm], order=1, mode="grid-wrap"
        )
        scale = self.counts_per_us * float(sfp.pixel_time_us) / max(float(self.image.max()), 1e-12)
        return self._rng.poisson(np.clip(clean, 0.0, None) * scale).astype(np.float32)


class SpecimenScanData:
    """usim scan data rendered from one of our simulated specimens, wherever usim's beam is.

    Each frame is :func:`simulators.render_frame` of the field usim describes (centre, field of view,
    pixels, dwell, rotation), so dose, noise and the planted atoms follow our simulator; ``last_truth``
    keeps the latest frame's ground truth for tests.
    """

    def __init__(self, specimen: Any, imaging: Any, seed: int = 0) -> None:
        self.specimen, self.imaging = specimen, imaging
        self._rng = np.random.default_rng(seed)
        self.last_truth: Any = None

    def generate_scan_data(self, instrument: Any, sfp: Any) -> np.ndarray:
        """The frame usim asked for (usim's scan-data protocol)."""
        from simulators import ScanRequest, render_frame

        h, w = int(sfp.size.height), int(sfp.size.width)
        offset = instrument.value_manager.actual_offset_m
        scan = ScanRequest(
            x_nm=float(sfp.center_nm.x) - 1e9 * float(offset.x),
            y_nm=float(sfp.center_nm.y) - 1e9 * float(offset.y),
            fov_nm=float(sfp.fov_nm) * w / h,
            rows=h,
            cols=w,
            dwell_us=float(sfp.pixel_time_us),
            rotation_deg=math.degrees(sfp.rotation_rad),
        )
        frame = render_frame(self.specimen, scan, self.imaging, self._rng)
        self.last_truth = frame.truth
        return np.asarray(frame.image, dtype=np.float32)


class UsimHost:
    """Nion's simulated STEM, headless: ``with UsimHost() as (stem, scan): ...``.

    Parameters
    ----------
    scan_data
        An object with ``generate_scan_data(instrument, frame_parameters)``; usim's own sample by default.
    config_dir
        Nion's instrumentation configuration folder (a temporary one by default).
    """

    def __init__(self, scan_data: Any = None, config_dir: Path | None = None) -> None:
        require_nion()
        self.scan_data = scan_data
        self._tmp = tempfile.TemporaryDirectory(prefix="autoscope-usim-") if config_dir is None else None
        self.config_dir = Path(self._tmp.name) if self._tmp is not None else Path(config_dir)  # type: ignore[arg-type]
        self.stem: Any = None
        self.scan: Any = None

    def start(self) -> tuple[Any, Any]:
        """Start the machinery, register usim, return (STEM controller, scan hardware source)."""
        from nion.instrumentation import HardwareSource, scan_base
        from nion.usim_device import InstrumentDevice, ScanDevice
        from nion.utils import Registry

        HardwareSource.run()
        scan_base.run(self.config_dir)
        generator = self.scan_data or InstrumentDevice.ScanDataGenerator(sample_index=0)
        instrument = InstrumentDevice.Instrument(
            USIM_INSTRUMENT_ID, InstrumentDevice.ValueManager(), InstrumentDevice.AxisManager(), generator
        )
        Registry.register_component(instrument, {"instrument_controller", "stem_controller"})
        Registry.register_component(ScanDevice.ScanModule(instrument), {"scan_module"})
        manager = HardwareSource.HardwareSourceManager()
        self.stem = Registry.get_component("stem_controller")
        self.scan = manager.get_hardware_source_for_hardware_source_id(USIM_SCAN_ID)
        if self.scan is None:
            self.stop()
            raise RuntimeError("usim's scan device did not register (start UsimHost on the main thread)")
        return self.stem, self.scan

    def stop(self) -> None:
        """Unregister usim and stop Nion's machinery, so that no thread outlives it (idempotent)."""
        from nion.instrumentation import HardwareSource, scan_base
        from nion.utils import Registry

        scan_module = Registry.get_component("scan_module")
        if scan_module is not None:
            Registry.unregister_component(scan_module, {"scan_module"})  # closes the scan source and its thread
        stem = Registry.get_component("stem_controller")
        if stem is not None:
            Registry.unregister_component(stem, {"instrument_controller", "stem_controller"})
        scan_base.stop()
        HardwareSource.stop()
        HardwareSource.HardwareSourceManager().close()
        self.stem = self.scan = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> tuple[Any, Any]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
