"""Fixtures of the driver tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def segmenter():
    """The bundled ensemble on one CPU thread."""
    from models.segmenter import Segmenter

    return Segmenter(providers="cpu", threads=1)
