"""Perception of frames without atomic-scale contrast: no columns, and the frame says why."""

from __future__ import annotations

import numpy as np

from agent.observation import INPUT_VARIABLES
from agent.perception import Perception
from agent.reward import Reward
from drivers.base import Frame
from simulators import ImagingParams, ScanRequest, Specimen, SpecimenConfig, render_frame


def test_a_frame_of_noise_gives_no_atoms_and_is_flagged(segmenter):
    perception = Perception(segmenter)
    noise = np.random.default_rng(0).poisson(3.0, (256, 256)).astype(np.float32)
    obs = perception.observe(Frame.of(noise, 0.02), step=0)
    assert obs.atoms_resolved and obs.n_atoms == 0 and obs.new_defects == 0 and len(perception.catalog) == 0
    assert obs.input_check["featureless"] == 1.0 and obs.input_check["saturated_fraction"] == 0.0
    assert obs.featureless
    assert 0 < obs.input_check["peak_snr"] < 20
    assert obs.summary()["input_check"] == obs.input_check
    penalised = Reward("new_defects - 10 * featureless", perception.variable_names())
    assert penalised(obs) == -10.0


def test_a_lattice_frame_is_not_flagged(segmenter):
    frame = render_frame(
        Specimen(SpecimenConfig(seed=4, lattice="WS2", width_nm=40, height_nm=40)),
        ScanRequest(fov_nm=5.12, rows=256, cols=256, dwell_us=8.0),
        ImagingParams(track_dose=False),
        np.random.default_rng(1),
    )
    obs = Perception(segmenter).observe(Frame.of(frame.image, 0.02), step=0)
    assert obs.input_check["featureless"] == 0.0 and obs.input_check["peak_snr"] > 100
    assert not obs.featureless
    assert obs.n_atoms > 100
    assert set(INPUT_VARIABLES) <= set(obs.variables())


def test_a_survey_carries_the_input_variables_as_zero(segmenter):
    survey = Frame.of(np.zeros((64, 64), np.float32), 0.5)  # 0.5 nm per pixel: too coarse to segment
    obs = Perception(segmenter).observe(survey, step=0)
    assert not obs.atoms_resolved and obs.input_check == dict.fromkeys(INPUT_VARIABLES, 0.0)


def test_a_run_configuration_can_keep_the_columns_of_featureless_frames(segmenter):
    from agent.config import RunConfig
    from agent.experiment import Experiment

    noise = Frame.of(np.random.default_rng(2).poisson(3.0, (256, 256)).astype(np.float32), 0.02)
    counts = {}
    for keep in (False, True):
        experiment = Experiment(RunConfig(keep_featureless=keep, steps=1), segmenter=segmenter)
        try:
            counts[keep] = experiment.perception.observe(noise, step=0).n_atoms
        finally:
            experiment.driver.close()
    assert counts[False] == 0 and counts[True] > 50
    assert not segmenter.keep_featureless  # the shared segmenter is left as it was
