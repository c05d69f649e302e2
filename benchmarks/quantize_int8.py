"""Would int8 make the ensemble faster on this CPU?  Static QDQ quantisation of every convolution, timed beside fp32.

The bundled graph's convolutions are quantised by onnxruntime (unsigned 8-bit activations, signed 8-bit
per-channel weights, activation ranges calibrated on unseen simulator frames); the uncertainty
arithmetic stays fp32.  Both graphs run on the same native-size input in one process, interleaved.
A speed experiment only: the int8 graph is not validated for quality and is not shipped.

    python benchmarks/quantize_int8.py [--threads 2] [--runs 15] [--out FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from report import emit, machine

from models.manifest import load_manifest
from models.preprocess import normalize, resample, resampled_shape
from models.segmenter import DEFAULT_MODEL
from models.training.evaluate import eval_frames

#: Calibration frames come from their own seed stream (not training, validation or evaluation).
CALIBRATION_SEED = 99


class _Frames(CalibrationDataReader):
    def __init__(self, name: str, inputs: list[np.ndarray]) -> None:
        self._items = iter([{name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def _native_inputs(count: int) -> list[np.ndarray]:
    manifest = load_manifest(DEFAULT_MODEL)[0]
    multiple = manifest.input_multiple
    out = []
    for frame in eval_frames(count, shifted=False, seed=CALIBRATION_SEED):
        shape = resampled_shape(frame.image.shape, frame.pixel_size_nm, manifest.native_pixel_size_nm)
        x = normalize(resample(frame.image, shape), manifest.normalisation.low_pct, manifest.normalisation.high_pct)
        h, w = (x.shape[0] // multiple) * multiple, (x.shape[1] // multiple) * multiple
        out.append(np.ascontiguousarray(x[None, None, :h, :w], dtype=np.float32))
    return out


def quantize(src: Path, dst: Path, frames: int) -> None:
    """Write the int8 (QDQ) version of ``src`` to ``dst``."""
    name = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(dst),
        _Frames(name, _native_inputs(frames)),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--calibration-frames", type=int, default=16)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    fp32 = load_manifest(DEFAULT_MODEL)[1]
    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "int8.onnx"
        quantize(fp32, int8, args.calibration_frames)
        sessions = {"fp32": _session(fp32, args.threads), "int8_qdq": _session(int8, args.threads)}
        x = np.random.default_rng(0).normal(size=(1, 1, 344, 344)).astype(np.float32)
        name = sessions["fp32"].get_inputs()[0].name
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for s in sessions.values():
            s.run(None, {name: x})
        for _ in range(args.runs):  # interleaved, so drifts of this VM's speed hit both alike
            for key, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, {name: x})
                times[key].append(time.perf_counter() - t0)
    p50 = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    emit(
        {
            "benchmark": "quantize_int8",
            "input": [344, 344],
            "threads": args.threads,
            "p50_ms": p50,
            "int8_speedup": p50["fp32"] / p50["int8_qdq"],
            "onnxruntime": ort.get_version_string(),
            "machine": machine(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
