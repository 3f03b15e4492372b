"""Exporting trained feed-forward models for other runtimes (ONNX).

`export_onnx(request)` builds the graph of a `launch/stylize.py` request (the methods with an
`export_onnx` of their own: johnson; msgnet with its style folded in; stylebank with every bank;
adain and magenta, which take the style as a second input), `compare` runs it in onnxruntime
beside the library's own result, and `save` writes it atomically.
"""
import importlib
from typing import Any, Callable, Optional

import numpy as np

from jaxstyle import api
from jaxstyle.errors import ConfigError
from jaxstyle.errors import JaxstyleError

# Largest |ONNX - jaxstyle| accepted on [0, 1] pixels: the two differ by float32 summation order
# (~1e-5 measured); a wrong layer differs by far more.
TOLERANCE = 2e-3


class ExportError(JaxstyleError):
  """The exported graph does not reproduce the library's result."""


def exportable() -> list:
  return [m for m in api.METHODS if hasattr(api.get_method(m), "export_onnx")]


def export_onnx(request: api.StylizeRequest) -> Any:
  """The ONNX ModelProto of the request's model (with its style, for msgnet).

  Raises:
    ConfigError: the method has no ONNX export, or the request sets something the graph cannot
      hold (colour preservation, masks, ...).
  """
  hook = getattr(api.get_method(request.method), "export_onnx", None)
  if hook is None:
    raise ConfigError(f"--export_onnx supports {', '.join(exportable())}, not {request.method}")
  return hook(request)


def _nchw(image01: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(image01, np.float32).transpose(2, 0, 1)[None])


def compare(model: Any, stylizer: Callable[[np.ndarray], np.ndarray], content01: np.ndarray,
            style01: Optional[np.ndarray] = None) -> Optional[float]:
  """Max |ONNX - stylizer| on one `[H, W, 3]` image, run by onnxruntime; None without it.

  `style01` is fed to a graph with a `style` input (AdaIN); other inputs keep their defaults.

  Raises:
    ExportError: the difference is above TOLERANCE.
  """
  try:
    ort = importlib.import_module("onnxruntime")
  except ImportError:
    return None
  options = ort.SessionOptions()
  options.log_severity_level = 3  # not the warning that `alpha`'s default blocks constant folding
  session = ort.InferenceSession(model.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
  feed = {"content": _nchw(content01)}
  if "style" in {i.name for i in session.get_inputs()}:
    feed["style"] = _nchw(style01)
  got = session.run(None, feed)[0][0].transpose(1, 2, 0)
  err = float(np.abs(got - np.asarray(stylizer(content01), np.float32)).max())
  if not err <= TOLERANCE:
    raise ExportError(f"the ONNX graph differs from jaxstyle by {err:.3g} (> {TOLERANCE}); "
                      "not written")
  return err


def save(model: Any, path: str) -> None:
  """Writes the model to `path` atomically (a temporary file in the same folder, then a rename)."""
  from pretrained import converted  # pylint: disable=g-import-not-at-top
  converted.write_atomic(path, model.SerializeToString())
