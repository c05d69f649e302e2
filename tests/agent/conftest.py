"""Helpers for agent tests: synthetic observations at chosen stage positions."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from agent.observation import Observation
from drivers.base import Frame

CLASSES = ("background", "atom", "vacancy", "dopant")


def observation_at(
    x_nm: float, y_nm: float, fov_nm: float = 10.0, new_defects: int = 0, ood: float = 0.0, image=None
) -> Observation:
    """An observation of a field at (x_nm, y_nm); a survey (unresolved) when ``image`` is given."""
    pixels = 16 if image is None else image.shape[0]
    frame = Frame.of(np.zeros((pixels, pixels), np.float32), fov_nm / pixels, x_nm=x_nm, y_nm=y_nm, fov_nm=fov_nm)
    return Observation.without_atoms(frame.header, new_defects, ood, image, CLASSES)


@pytest.fixture
def obs_at():
    """The :func:`observation_at` factory."""
    return observation_at


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sim_server():
    """``autoscope instrument --sim`` in a subprocess: yields (endpoint, process)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "instrument", "--sim", "--bind", endpoint, "--specimen-seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()
    assert "simulated instrument on" in line, proc.stderr.read()
    yield endpoint, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=10)
