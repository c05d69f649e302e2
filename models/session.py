"""onnxruntime sessions with providers chosen from configuration, reported honestly.

``auto`` prefers TensorRT, then CUDA, then CPU among the providers this
onnxruntime build offers.  An explicit request for a GPU provider that is not
available, or that the session did not activate, is an error: nothing
silently falls back to the CPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_AUTO_ORDER = ("tensorrt", "cuda", "cpu")


class ProviderError(ValueError):
    """A requested execution provider is unavailable or did not activate."""


def resolve_providers(requested: str | Sequence[str]) -> list[str]:
    """Onnxruntime provider names for ``auto``, a short name, or a list of short names.

    Raises
    ------
    ProviderError
        For an unknown name, or an explicitly requested provider this build lacks.
    """
    available = set(ort.get_available_providers())
    names = [requested] if isinstance(requested, str) else list(requested)
    if names == ["auto"]:
        return [PROVIDER_NAMES[n] for n in _AUTO_ORDER if PROVIDER_NAMES[n] in available]
    out = []
    for n in names:
        if n not in PROVIDER_NAMES:
            raise ProviderError(f"unknown provider {n!r}: use auto or any of {sorted(PROVIDER_NAMES)}")
        full = PROVIDER_NAMES[n]
        if full not in available:
            raise ProviderError(f"provider {n!r} was requested but this onnxruntime offers only {sorted(available)}")
        out.append(full)
    return out


class OnnxModel:
    """An onnxruntime session over one ONNX file, with the providers it really uses.

    Parameters
    ----------
    path
        The .onnx file (already checked against its manifest by the caller).
    providers
        ``"auto"``, a short name (``cpu``, ``cuda``, ``tensorrt``) or a list of them.
    threads
        Intra-op threads (0 lets onnxruntime choose).
    """

    def __init__(self, path: Path, providers: str | Sequence[str] = "auto", threads: int = 0) -> None:
        wanted = resolve_providers(providers)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's worker threads spin for a while after each run; in the agent's loop the next stages
        # (the instrument, recording, the policy) would fight them for the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        explicit = providers != "auto"
        if not explicit:
            # 'auto' tries the GPU providers a GPU build lists even where no GPU exists; the
            # fallback warning is noise there, and the active providers are reported anyway.
            ort.set_default_logger_severity(4)
        chatter = io.StringIO()  # onnxruntime prints its provider fallbacks to stdout
        try:
            with contextlib.redirect_stdout(chatter if not explicit else sys.stdout):
                self.session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ProviderError(f"cannot load {path}: {exc}") from exc
        finally:
            ort.set_default_logger_severity(2)
            if chatter.getvalue():
                logger.debug("onnxruntime provider fallback: %s", chatter.getvalue().strip())
        self.active_providers: list[str] = list(self.session.get_providers())
        missing = [p for p in wanted if p not in self.active_providers and p != PROVIDER_NAMES["cpu"]]
        if explicit and missing:
            raise ProviderError(f"requested {missing} but the session runs on {self.active_providers}")
        self.on_gpu = self.active_providers[0] != PROVIDER_NAMES["cpu"]
        self.output_names = [o.name for o in self.session.get_outputs()]
        logger.info("onnx model %s on %s", path.name, self.active_providers)

    def run(self, image: np.ndarray, input_name: str = "image") -> dict[str, np.ndarray]:
        """Run on a float32 batch (``(1, 1, H, W)`` for segmentation); outputs by name, as numpy arrays."""
        if not self.on_gpu:
            return dict(zip(self.output_names, self.session.run(None, {input_name: image}), strict=True))
        binding = self.session.io_binding()  # inputs copied once, outputs allocated on the device
        binding.bind_cpu_input(input_name, np.ascontiguousarray(image))
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))
