"""Serving: `brain-tumor predict`, ONNX export and the contract a served model is checked against."""
