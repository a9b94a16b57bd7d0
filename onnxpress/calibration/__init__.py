"""Calibration: read calibration data, run a model on it in onnxruntime, and
stream chosen activations into bounded-memory collectors.

* :func:`open_calibration` -> :class:`CalibrationData` (npz folder, stacked npz,
  ``module:function``, ``random[:N]``, lists, callables), validated feed by feed;
* collectors: :class:`MinMax`, :class:`Histogram`, :class:`PerChannel`, :class:`Gram`;
* :func:`capture` exposes tensors (also inside ``If`` branches) as outputs and
  feeds each sample's values to the collectors; :func:`capturable_tensors`
  says which tensors it can reach.

This package measures; it does not decide scales (that is ``onnxpress.quant``).
"""
from __future__ import annotations

from .capture import capturable_tensors, capture
from .collectors import Collector, Gram, Histogram, MinMax, PerChannel
from .readers import CalibrationData, Feeds, open_calibration

__all__ = [
    "CalibrationData",
    "Collector",
    "Feeds",
    "Gram",
    "Histogram",
    "MinMax",
    "PerChannel",
    "capturable_tensors",
    "capture",
    "open_calibration",
]
