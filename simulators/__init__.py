"""Synthetic ground truth for autoscope: specimens, STEM image formation, tilt series.

Imports nothing else from this repository.  The main entry points::

    from simulators import Specimen, SpecimenConfig, ScanRequest, ImagingParams, render_frame
    specimen = Specimen(SpecimenConfig(seed=1, lattice="MoS2"))
    frame = render_frame(specimen, ScanRequest(x_nm=10, y_nm=-5, fov_nm=10.24), rng=np.random.default_rng(0))
"""

from simulators.config import ImagingParams, ScanRequest, SpecimenConfig
from simulators.defects import CLASS_NAMES, DEFECT_LABELS, ColumnClass, DefectKind, Region
from simulators.lattices import LATTICES, get_lattice
from simulators.render import render_frame
from simulators.scan import ScanDistortion, ScanGeometry
from simulators.specimen import Specimen
from simulators.truth import ColumnTruth, FrameTruth, SimulatedFrame

__all__ = [
    "CLASS_NAMES",
    "DEFECT_LABELS",
    "LATTICES",
    "ColumnClass",
    "ColumnTruth",
    "DefectKind",
    "FrameTruth",
    "ImagingParams",
    "Region",
    "ScanDistortion",
    "ScanGeometry",
    "ScanRequest",
    "SimulatedFrame",
    "Specimen",
    "SpecimenConfig",
    "get_lattice",
    "render_frame",
]
