"""An ONNX graph builder that mirrors the shared layers (`jaxstyle/nn`) from their Flax parameters.

The exported graphs work on NCHW tensors with dynamic batch, height and width, so one file serves
every image size. Each builder method takes the parameter subtree of the Flax module it mirrors
and applies the same arithmetic: explicit reflection padding then an unpadded convolution
(`ConvLayer`), `InstanceNormalization` (biased variance, eps inside the square root, as
`InstanceNorm`), nearest-neighbour `Resize` before upsampling convolutions. The library's CPU/GPU
rewrites of these layers (Winograd, sub-pixel, border correction) are speed tricks with the same
results, so the plain forms are what ONNX runtimes should see.

The `onnx` package is imported lazily: exporting is optional (`pip install jaxstyle[onnx]`).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from jaxstyle.errors import ConfigError

OPSET = 17  # Pad/Clip/Slice with tensor inputs, Resize with nearest_mode, InstanceNormalization


def onnx_module():
  """The `onnx` package, or a one-line ConfigError naming the extra to install."""
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError("exporting ONNX needs the `onnx` package: pip install onnx") from None
  return onnx


class Graph:
  """Accumulates ONNX nodes and initializers; tensors are referred to by name."""

  def __init__(self, name: str):
    self.onnx = onnx_module()
    self.name = name
    self.nodes: List[Any] = []
    self.initializers: List[Any] = []
    self._count = 0

  def fresh(self, prefix: str) -> str:
    self._count += 1
    return f"{prefix}_{self._count}"

  def const(self, value, prefix: str = "const", dtype=np.float32) -> str:
    """Adds an initializer holding `value`; returns its name."""
    name = self.fresh(prefix)
    self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype), name))
    return name

  def op(self, op_type: str, inputs: List[str], prefix: Optional[str] = None, **attrs) -> str:
    """Adds one node with a single output; returns the output's name."""
    out = self.fresh(prefix or op_type.lower())
    self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=out, **attrs))
    return out

  # ---------------------------------------------------------------------------------------------
  # Elementwise and shape helpers

  def relu(self, x: str) -> str:
    return self.op("Relu", [x])

  def add(self, x: str, y: str) -> str:
    return self.op("Add", [x, y])

  def affine(self, x: str, scale, offset) -> str:
    """`x * scale + offset`, each a scalar or a per-channel vector (broadcast over NCHW)."""
    scale, offset = np.asarray(scale, np.float32), np.asarray(offset, np.float32)
    if np.any(scale != 1):
      x = self.op("Mul", [x, self.const(scale.reshape(-1, 1, 1) if scale.ndim else scale)])
    if np.any(offset != 0):
      x = self.op("Add", [x, self.const(offset.reshape(-1, 1, 1) if offset.ndim else offset)])
    return x

  def reverse_channels(self, x: str) -> str:
    """RGB <-> BGR on an NCHW tensor."""
    return self.op("Gather", [x, self.const([2, 1, 0], dtype=np.int64)], axis=1)

  def upsample(self, x: str, factor: int) -> str:
    """Nearest-neighbour upsampling by an integer factor (every pixel repeated factor x factor)."""
    if factor == 1:
      return x
    scales = self.const([1.0, 1.0, factor, factor])
    return self.op("Resize", [x, "", scales], mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")

  def pad_to_multiple(self, x: str, multiple: int):
    """Reflection-pads H and W at the bottom/right to multiples of `multiple`.

    Returns (padded, hw) with `hw` the int64 tensor [H, W] of the input, for `crop`.
    """
    hw = self.op("Slice", [self.op("Shape", [x]), self.const([2], dtype=np.int64),
                           self.const([4], dtype=np.int64)])
    m = self.const([multiple, multiple], dtype=np.int64)
    extra = self.op("Mod", [self.op("Sub", [m, self.op("Mod", [hw, m])]), m])
    pads = self.op("Concat", [self.const([0, 0, 0, 0, 0, 0], dtype=np.int64), extra], axis=0)
    return self.op("Pad", [x, pads], mode="reflect"), hw

  def crop(self, x: str, hw: str) -> str:
    """`x[:, :, :H, :W]` for the int64 tensor `hw` = [H, W]."""
    return self.op("Slice", [x, self.const([0, 0], dtype=np.int64), hw,
                             self.const([2, 3], dtype=np.int64)])

  def clip01(self, x: str) -> str:
    return self.op("Clip", [x, self.const(0.0), self.const(1.0)])

  # ---------------------------------------------------------------------------------------------
  # Mirrors of jaxstyle.nn layers (parameters as Flax stores them)

  def conv_layer(self, x: str, p: Dict[str, Any], *, strides: int = 1, padding: str = "reflect",
                 pad: Optional[int] = None, upsample: int = 1) -> str:
    """`jaxstyle.nn.ConvLayer` (and `UpsampleConv`, whose params nest it as 'conv_layer')."""
    if "conv_layer" in p:
      p = p["conv_layer"]
    if "conv" in p:
      p = p["conv"]  # else a bare nn.Conv's {kernel, bias}, as in the VGG
    kernel = np.asarray(p["kernel"], np.float32)  # HWIO
    oihw = self.const(kernel.transpose(3, 2, 0, 1), "kernel")
    bias = self.const(p["bias"], "bias") if "bias" in p else None
    return self.conv(self.upsample(x, upsample), oihw, bias, kernel.shape[0], strides=strides,
                     padding=padding, pad=pad)

  def conv(self, x: str, kernel: str, bias: Optional[str], k: int, *, strides: int = 1,
           padding: str = "reflect", pad: Optional[int] = None) -> str:
    """Padding then a `k` x `k` convolution by the OIHW tensor `kernel` (a constant or computed)."""
    pad = k // 2 if pad is None else pad
    conv_pads = [0, 0, 0, 0]
    if padding == "reflect" and pad:
      x = self.op("Pad", [x, self.const([0, 0, pad, pad, 0, 0, pad, pad], dtype=np.int64)],
                  mode="reflect")
    elif padding == "zero":
      conv_pads = [pad] * 4
    elif padding not in ("reflect", "none"):
      raise ConfigError(f"cannot export padding {padding!r}")
    return self.op("Conv", [x, kernel] + ([bias] if bias else []), kernel_shape=[k, k],
                   strides=[strides, strides], pads=conv_pads)

  def conv_transpose(self, x: str, p: Dict[str, Any], *, strides: int, padding: int,
                     output_padding: int) -> str:
    """`jaxstyle.nn.ConvTranspose` (PyTorch's ConvTranspose2d geometry, as ONNX's)."""
    p = p["conv_transpose"]
    kernel = np.asarray(p["kernel"], np.float32)  # [k, k, Cout, Cin]: a torch weight, permuted
    k = kernel.shape[0]
    inputs = [x, self.const(kernel.transpose(3, 2, 0, 1), "kernel")]
    if "bias" in p:
      inputs.append(self.const(p["bias"], "bias"))
    return self.op("ConvTranspose", inputs, kernel_shape=[k, k], strides=[strides, strides],
                   pads=[padding] * 4, output_padding=[output_padding] * 2)

  def instance_norm(self, x: str, p: Optional[Dict[str, Any]], channels: int,
                    eps: float = 1e-5) -> str:
    """`jaxstyle.nn.InstanceNorm`; a missing scale/bias (no affine map) is 1/0."""
    p = p or {}
    scale = np.asarray(p.get("scale", np.ones(channels)), np.float32)
    bias = np.asarray(p.get("bias", np.zeros(channels)), np.float32)
    return self.op("InstanceNormalization", [x, self.const(scale, "scale"),
                                             self.const(bias, "beta")], epsilon=eps)

  def channel_stats(self, x: str, eps: float):
    """Per-sample, per-channel mean and sqrt(biased variance + eps) over H, W (`[N, C, 1, 1]`)."""
    mean = self.op("ReduceMean", [x], axes=[2, 3], keepdims=1)
    centred = self.op("Sub", [x, mean])
    var = self.op("ReduceMean", [self.op("Mul", [centred, centred])], axes=[2, 3], keepdims=1)
    return mean, self.op("Sqrt", [self.op("Add", [var, self.const(eps)])])

  def norm_relu(self, x: str, params: Dict[str, Any], name: str, channels: int) -> str:
    return self.relu(self.instance_norm(x, params.get(name), channels))

  def residual_block(self, x: str, p: Dict[str, Any]) -> str:
    """`jaxstyle.nn.ResidualBlock` with instance norm and reflection padding."""
    c = np.shape(p["conv1"]["conv"]["kernel"])[-1]
    y = self.norm_relu(self.conv_layer(x, p["conv1"]), p, "norm1", c)
    y = self.instance_norm(self.conv_layer(y, p["conv2"]), p.get("norm2"), c)
    return self.add(x, y)

  def bottleneck(self, x: str, p: Dict[str, Any], strides: int = 1) -> str:
    """`jaxstyle.nn.Bottleneck` (a 'residual' convolution in `p` means a projected skip)."""
    cin = _in_channels(p["conv1"])
    planes = _out_channels(p["conv1"])
    skip = (self.conv_layer(x, p["residual"], strides=strides, padding="none")
            if "residual" in p else x)
    y = self.conv_layer(self.norm_relu(x, p, "norm1", cin), p["conv1"], padding="none")
    y = self.conv_layer(self.norm_relu(y, p, "norm2", planes), p["conv2"], strides=strides)
    y = self.conv_layer(self.norm_relu(y, p, "norm3", planes), p["conv3"], padding="none")
    return self.add(skip, y)

  def up_bottleneck(self, x: str, p: Dict[str, Any], upsample: int = 2) -> str:
    """`jaxstyle.nn.UpBottleneck`."""
    cin = _in_channels(p["conv1"])
    planes = _out_channels(p["conv1"])
    # A 1x1 convolution commutes with nearest upsampling: convolve first, on 4x fewer pixels.
    skip = self.upsample(self.conv_layer(x, p["residual"], padding="none"), upsample)
    y = self.conv_layer(self.norm_relu(x, p, "norm1", cin), p["conv1"], padding="none")
    y = self.conv_layer(self.norm_relu(y, p, "norm2", planes), p["conv2"], upsample=upsample)
    y = self.conv_layer(self.norm_relu(y, p, "norm3", planes), p["conv3"], padding="none")
    return self.add(skip, y)

  # ---------------------------------------------------------------------------------------------

  def model(self, input_name: str, output: str, output_name: str, doc: str,
            metadata: Dict[str, str], extra_inputs: Sequence[Tuple[str, list, Any]] = ()) -> Any:
    """The finished, checked ModelProto: input `[N, 3, H, W]` -> output `[N, 3, H, W]`.

    `extra_inputs`: (name, shape, default) of further float32 inputs; a default other than None
    is also an initializer of that name, which runtimes use when the caller does not feed it.
    """
    helper = self.onnx.helper
    dims = ["batch", 3, "height", "width"]
    self.nodes.append(helper.make_node("Identity", [output], [output_name], name=output_name))
    float32 = self.onnx.TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(input_name, float32, dims)]
    for name, shape, default in extra_inputs:
      inputs.append(helper.make_tensor_value_info(name, float32, shape))
      if default is not None:
        self.initializers.append(
            self.onnx.numpy_helper.from_array(np.asarray(default, np.float32), name))
    graph = helper.make_graph(
        self.nodes, self.name, inputs,
        [helper.make_tensor_value_info(output_name, float32, dims)],
        initializer=self.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="jaxstyle", doc_string=doc)
    model.ir_version = min(model.ir_version, 8)  # readable by older runtimes for opset 17
    helper.set_model_props(model, metadata)
    self.onnx.checker.check_model(model, full_check=True)
    return model


def _in_channels(p: Dict[str, Any]) -> int:
  return np.shape(p["conv"]["kernel"])[2]


def _out_channels(p: Dict[str, Any]) -> int:
  return np.shape(p["conv"]["kernel"])[3]
