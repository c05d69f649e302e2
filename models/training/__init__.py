"""Training, ensembling and ONNX export (torch). Never imported at inference time."""
