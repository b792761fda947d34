"""Turning pushed files into servable ONNX, with a signature."""
