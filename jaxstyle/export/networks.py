"""ONNX graphs of the feed-forward networks whose style is fixed at export time.

Every graph takes `content`, `[N, 3, H, W]` float32 RGB in [0, 1] (NCHW: what ONNX runtimes and
pytorch/examples' `--export_onnx` models take), any H and W, and returns `stylized`, the same shape
in [0, 1], computed as the library's `stylize` does: reflection-padded at the bottom/right to a
multiple of 4, the network, cropped back, clipped.
"""
from typing import Any

import numpy as np

from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.export.onnx_graph import Graph
from jaxstyle.methods.adain.model import AdaINConfig
from jaxstyle.methods.johnson.model import JohnsonConfig
from jaxstyle.methods.msgnet.model import EXPANSION
from jaxstyle.methods.msgnet.model import MSGNetConfig

INPUT = "content"
OUTPUT = "stylized"
_LAYOUT = ("input `content` and output `stylized`: [N, 3, H, W] float32 RGB in [0, 1], any H, W "
           "of at least 8 px")


def johnson(params: Any, config: JohnsonConfig) -> Any:
  """The Johnson `TransformerNet` (`jaxstyle.methods.johnson.model`) as an ONNX ModelProto."""
  if config.output not in ("tanh", "linear"):
    raise ConfigError(f"cannot export Johnson output {config.output!r}")
  g = Graph("johnson")
  x, hw = g.pad_to_multiple(INPUT, 4)
  x = g.affine(x, config.pixel_scale, 0.0)
  c1, c2, c3 = config.channels()
  for name, channels, stride in (("conv1", c1, 1), ("conv2", c2, 2), ("conv3", c3, 2)):
    x = g.conv_layer(x, params[f"{name}_conv"], strides=stride)
    x = g.relu(g.instance_norm(x, params[f"{name}_norm"], channels))
  for i in range(config.num_residual):
    x = g.residual_block(x, params[f"res{i + 1}"])
  for name, channels in (("up1", c2), ("up2", c1)):
    x = g.conv_layer(x, params[f"{name}_conv"], upsample=2)
    x = g.relu(g.instance_norm(x, params[f"{name}_norm"], channels))
  x = g.conv_layer(x, params["out_conv"])
  if config.output == "tanh":
    mean = np.asarray(vgg.IMAGENET_MEAN, np.float32) * 255.0
    x = g.affine(g.op("Tanh", [x]), config.tanh_constant / config.pixel_scale,
                 mean / config.pixel_scale)
  else:
    x = g.affine(x, 1.0 / config.pixel_scale, 0.0)
  out = g.clip01(g.crop(x, hw))
  return g.model(INPUT, out, OUTPUT, f"Johnson et al. 2016 transformation network; {_LAYOUT}",
                 {"method": "johnson", "layout": "NCHW RGB [0, 1]"})


def msgnet(params: Any, config: MSGNetConfig, gram: np.ndarray) -> Any:
  """MSG-Net (`jaxstyle.methods.msgnet.model`) towards one style Gram, as an ONNX ModelProto.

  CoMatch's `X (W G)` with a fixed G is a 1x1 convolution by the matrix `W G`, so the style is
  folded into one constant and the siamese style branch is not exported.

  Args:
    params: MSGNet parameters.
    config: its MSGNetConfig.
    gram: the CoMatch target `[1, C, C]` or `[C, C]` (`msgnet.style_gram`).
  """
  gram = np.asarray(gram, np.float32).reshape(config.comatch_features, config.comatch_features)
  g = Graph("msgnet")
  x, hw = g.pad_to_multiple(INPUT, 4)
  x = g.affine(g.reverse_channels(x), config.pixel_scale, 0.0)  # the network works on BGR
  enc = params["encoder"]
  x = g.relu(g.instance_norm(g.conv_layer(x, enc["stem"]), enc.get("stem_norm"),
                             config.widths()[0]))
  x = g.bottleneck(x, enc["down1"], strides=2)
  x = g.bottleneck(x, enc["down2"], strides=2)
  p = np.asarray(params["comatch"]["weight"], np.float64) @ gram.astype(np.float64)
  x = g.op("Conv", [x, g.const(p.T[:, :, None, None], "comatch")], kernel_shape=[1, 1])
  dec = params["decoder"]
  for i in range(config.n_blocks):
    x = g.bottleneck(x, dec[f"block{i}"])
  x = g.up_bottleneck(x, dec["up1"])
  x = g.up_bottleneck(x, dec["up2"])
  x = g.relu(g.instance_norm(x, dec.get("out_norm"), config.widths()[2] * EXPANSION))
  x = g.conv_layer(x, dec["out_conv"])
  x = g.affine(x, 1.0 / config.pixel_scale, config.output_offset)
  out = g.clip01(g.crop(g.reverse_channels(x), hw))
  return g.model(INPUT, out, OUTPUT, f"MSG-Net (Zhang & Dana 2017) with one style folded in; "
                 f"{_LAYOUT}", {"method": "msgnet", "layout": "NCHW RGB [0, 1]"})


def adain(params: Any, config: AdaINConfig, encoder: vgg.LossNet, alpha: float = 1.0) -> Any:
  """AdaIN (`jaxstyle.methods.adain`) as an ONNX ModelProto for any style.

  Inputs: `content` as every graph here, `style` `[1, 3, h, w]` (RGB [0, 1], any size of at least
  16 px) and `alpha` (a float32 scalar, `alpha` by default). The content and style are
  reflection-padded to multiples of 8, as `adain.stylize` pads them.

  Args:
    params: the decoder's parameters.
    config: its AdaINConfig (decoder widths, eps).
    encoder: the VGG it was trained with, as `adain.model.encoder_net` configures it.
    alpha: the default of the `alpha` input.
  """
  g = Graph("adain")
  x, hw = g.pad_to_multiple(INPUT, 8)
  style, _ = g.pad_to_multiple("style", 8)
  f_c, f_s = _vgg_relu4_1(g, x, encoder), _vgg_relu4_1(g, style, encoder)
  mean_c, std_c = g.channel_stats(f_c, config.eps)
  mean_s, std_s = g.channel_stats(f_s, config.eps)
  t = g.op("Add", [g.op("Mul", [g.op("Div", [g.op("Sub", [f_c, mean_c]), std_c]), std_s]), mean_s])
  t = g.add(f_c, g.op("Mul", [g.op("Sub", [t, f_c]), "alpha"]))  # alpha t + (1 - alpha) f_c
  x = g.relu(g.conv_layer(t, params["conv4_1"]))
  for block in (3, 2, 1):
    convs = vgg.BLOCKS[encoder.depth][block - 1]
    for i in range(convs, 0, -1):
      x = g.conv_layer(x, params[f"conv{block}_{i}"], upsample=2 if i == convs else 1)
      if not (block == 1 and i == 1):
        x = g.relu(x)
  out = g.clip01(g.crop(x, hw))
  return g.model(INPUT, out, OUTPUT, f"AdaIN (Huang & Belongie 2017), any style: {_LAYOUT}; "
                 "style: [1, 3, h, w] RGB [0, 1]; alpha: scalar, 0 content .. 1 style",
                 {"method": "adain", "layout": "NCHW RGB [0, 1]"},
                 extra_inputs=[("style", [1, 3, "style_height", "style_width"], None),
                               ("alpha", [], alpha)])


def _vgg_relu4_1(g: Graph, x: str, net: vgg.LossNet) -> str:
  """`net.features(x, ['relu4_1'])` of an NCHW RGB [0, 1] tensor (max pooling, floor sizes)."""
  if net.convention == "caffe":
    x = g.affine(g.reverse_channels(x), 255.0, -np.asarray(vgg.CAFFE_MEAN_BGR))
  else:
    std = np.asarray(vgg.IMAGENET_STD)
    x = g.affine(x, 1.0 / std, -np.asarray(vgg.IMAGENET_MEAN) / std)
  for b, n in enumerate(vgg.BLOCKS[net.depth][:4], start=1):
    for i in range(1, n + 1):
      x = g.relu(g.conv_layer(x, net.params[f"conv{b}_{i}"], padding=net.padding))
      if b == 4:
        return x
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
  raise AssertionError("unreachable")
