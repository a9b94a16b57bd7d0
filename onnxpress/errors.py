"""Exception types of onnxpress, all in one place.

Every message names the model, node, tensor or pass at fault, so that the CLI can
print it as one line. The CLI maps :class:`InputError` subclasses to exit code 2.
"""
from __future__ import annotations

__all__ = [
    "OnnxpressError",
    "InputError",
    "ModelLoadError",
    "ExternalDataError",
    "UnknownPassError",
    "InputNameError",
    "PassError",
    "CheckError",
    "ReferenceModelError",
]


class OnnxpressError(Exception):
    """Base class of every error raised on purpose by onnxpress."""


class InputError(OnnxpressError):
    """The user's input (a model, a file, a name, an option) is unusable."""


class ModelLoadError(InputError):
    """A model file is missing, is not ONNX, or is truncated."""


class ExternalDataError(ModelLoadError):
    """A tensor's external-data file is missing or shorter than the tensor."""


class UnknownPassError(InputError):
    """A pass or recipe name is not registered."""


class InputNameError(InputError):
    """A feed names an input the model does not have, or has a wrong shape or dtype."""


class PassError(OnnxpressError):
    """A pass failed or produced an invalid model (strict mode).

    Attributes:
        pass_name: registered name of the failing pass.
        node: name of the node at fault, when known.
    """

    def __init__(self, pass_name: str, message: str, node: str | None = None) -> None:
        where = f" at node {node!r}" if node else ""
        super().__init__(f"pass {pass_name!r}{where}: {message}")
        self.pass_name = pass_name
        self.node = node


class CheckError(OnnxpressError):
    """A model could not be run for a check (onnxruntime refused it)."""


class ReferenceModelError(InputError):
    """The user's original model cannot be loaded or run by onnxruntime, so it
    cannot serve as the reference of a check (e.g. a custom-domain op without a
    kernel). Exit code 2: the input is at fault, not the rewrite."""
