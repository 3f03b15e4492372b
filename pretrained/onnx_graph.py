"""Reading convolution weights out of (quantized) ONNX graphs, without running them.

Quantized exports (tf2onnx of a TF-Lite int8 model, onnxruntime's QDQ quantizer) keep each weight
as an int8/int32 initializer feeding a `DequantizeLinear` node:

  w = (q - zero_point) * scale

with a scalar scale/zero-point, or one per channel along `axis` (default 1, per the ONNX spec;
tf2onnx writes axis=0 for OIHW kernels and biases). Float initializers are taken as they are. The
`onnx` package is imported lazily: it is a test/conversion tool, not a runtime dependency.
"""
from typing import Dict, List, NamedTuple, Optional

import numpy as np

from jaxstyle.errors import WeightsError


def _onnx():
  try:
    import onnx  # pylint: disable=g-import-not-at-top
    from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise WeightsError("reading ONNX weights needs the `onnx` package: pip install onnx") from None
  return onnx, numpy_helper


def load_model(data: bytes, what: str):
  """Parses a serialized ONNX model, or raises a one-line WeightsError (truncated, not ONNX)."""
  onnx, _ = _onnx()
  try:
    model = onnx.load_model_from_string(data)
  except Exception as e:  # pylint: disable=broad-except  (protobuf raises several types)
    raise WeightsError(f"{what} is not a readable ONNX model ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else 'parse error'})") from None
  if not model.graph.node:
    raise WeightsError(f"{what} is not a readable ONNX model (empty graph)")
  return model


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray],
               axis: int = 1) -> np.ndarray:
  """`DequantizeLinear`: `(q - zero_point) * scale` in float32, per tensor or per `axis`."""
  q = np.asarray(q)
  scale = np.asarray(scale, np.float32)
  zp = np.zeros((), np.int64) if zero_point is None else np.asarray(zero_point).astype(np.int64)
  if scale.ndim == 1 and q.ndim > 0:
    axis = axis % q.ndim
    if scale.shape[0] != q.shape[axis]:
      raise ValueError(f"{scale.shape[0]} scales for axis {axis} of a {q.shape} tensor")
    shape = [1] * q.ndim
    shape[axis] = -1
    scale = scale.reshape(shape)
    zp = zp.reshape(shape) if zp.ndim == 1 else zp
  elif scale.ndim > 1:
    raise ValueError(f"blocked quantization (scale shape {scale.shape}) is not supported")
  # int64 first: int8 minus an int8 zero point would wrap around.
  return ((q.astype(np.int64) - zp).astype(np.float64) * scale).astype(np.float32)


def constant_tensors(model, what: str) -> Dict[str, np.ndarray]:
  """Every tensor computable from initializers alone: float initializers and dequantized weights.

  Returns:
    {tensor name: float32 array}, the `DequantizeLinear` outputs under their output names.
  """
  _, numpy_helper = _onnx()
  raw = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
  out = {k: v.astype(np.float32) for k, v in raw.items() if v.dtype.kind == "f"}
  for node in model.graph.node:
    if node.op_type != "DequantizeLinear" or node.input[0] not in raw:
      continue
    inputs = [raw.get(name) if name else None for name in node.input]
    if any(x is None for x, name in zip(inputs, node.input) if name):
      continue
    attrs = {a.name: a for a in node.attribute}
    axis = attrs["axis"].i if "axis" in attrs else 1
    try:
      out[node.output[0]] = dequantize(inputs[0], inputs[1],
                                       inputs[2] if len(inputs) > 2 else None, axis)
    except ValueError as e:
      raise WeightsError(f"{what}: cannot dequantize {node.input[0]}: {e}") from None
  return out


class ConvWeights(NamedTuple):
  """One `Conv` node's float weights: kernel `[O, I/groups, kh, kw]`, bias `[O]` or None."""
  name: str            # the kernel tensor's name without the `_dequant` suffix
  kernel: np.ndarray
  bias: Optional[np.ndarray]
  strides: tuple
  group: int


def conv_weights(model, what: str) -> List[ConvWeights]:
  """The constant kernels and biases of every `Conv` node, in graph order.

  Raises:
    WeightsError: a Conv whose kernel is not a constant (or uses an op we do not dequantize).
  """
  consts = constant_tensors(model, what)
  convs = []
  for node in model.graph.node:
    if node.op_type == "QLinearConv":
      raise WeightsError(f"{what}: QLinearConv nodes are not supported (export with QDQ nodes)")
    if node.op_type != "Conv":
      continue
    kernel = consts.get(node.input[1])
    if kernel is None:
      raise WeightsError(f"{what}: the kernel {node.input[1]!r} of Conv node {node.name!r} "
                         "is not a constant")
    bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    attrs = {a.name: a for a in node.attribute}
    strides = tuple(attrs["strides"].ints) if "strides" in attrs else (1, 1)
    group = attrs["group"].i if "group" in attrs else 1
    name = node.input[1]
    name = name[:-len("_dequant")] if name.endswith("_dequant") else name
    convs.append(ConvWeights(name, kernel, bias, strides, group))
  return convs
