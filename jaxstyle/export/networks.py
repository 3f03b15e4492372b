"""ONNX graphs of the feed-forward networks.

Every graph takes `content`, `[N, 3, H, W]` float32 RGB in [0, 1] (NCHW, the layout ONNX runtimes
expect), any H and W, and returns `stylized`, the same shape in [0, 1], computed as the library's
`stylize` does: reflection-padded at the bottom/right to the network's size multiple, the network,
cropped back, clipped. MSG-Net's style is folded in; StyleBank mixes its banks by a
`bank_weights` input; AdaIN and Magenta take the style image as a second input.
"""
from typing import Any

import numpy as np

from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.export.onnx_graph import Graph
from jaxstyle.methods.adain.model import AdaINConfig
from jaxstyle.methods.johnson.model import JohnsonConfig
from jaxstyle.methods.magenta.model import MagentaConfig
from jaxstyle.methods.magenta.model import normalized_layers
from jaxstyle.methods.msgnet.model import EXPANSION
from jaxstyle.methods.msgnet.model import MSGNetConfig
from jaxstyle.methods.stylebank.model import bank_name
from jaxstyle.methods.stylebank.model import StyleBankConfig

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
  f_c = _vgg_features(g, x, encoder, ["relu4_1"])["relu4_1"]
  f_s = _vgg_features(g, style, encoder, ["relu4_1"])["relu4_1"]
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


def _vgg_features(g: Graph, x: str, net: vgg.LossNet, layers) -> dict:
  """`net.features(x, layers)` (relu layers) of an NCHW RGB [0, 1] tensor: {layer: tensor}."""
  if net.convention == "caffe":
    x = g.affine(g.reverse_channels(x), 255.0, -np.asarray(vgg.CAFFE_MEAN_BGR))
  else:
    std = np.asarray(vgg.IMAGENET_STD)
    x = g.affine(x, 1.0 / std, -np.asarray(vgg.IMAGENET_MEAN) / std)
  wanted, out = set(layers), {}
  for b, n in enumerate(vgg.BLOCKS[net.depth], start=1):
    for i in range(1, n + 1):
      x = g.relu(g.conv_layer(x, net.params[f"conv{b}_{i}"], padding=net.padding))
      if f"relu{b}_{i}" in wanted:
        out[f"relu{b}_{i}"] = x
        if len(out) == len(wanted):
          return out
    # 2x2 windows, odd sizes rounded down: `vgg.pool2x2`.
    pool = "MaxPool" if net.pooling == "max" else "AveragePool"
    x = g.op(pool, [x], kernel_shape=[2, 2], strides=[2, 2])
  raise ConfigError(f"cannot export VGG layers {sorted(wanted - set(out))}")


def stylebank(params: Any, config: StyleBankConfig, weights: np.ndarray) -> Any:
  """StyleBank (`jaxstyle.methods.stylebank`) with every bank, as an ONNX ModelProto.

  A second input `bank_weights` `[S]` (default `weights`) mixes the banks at run time, the paper's
  linear fusion `F~ = sum_i w_i K_i(F) + (1 - sum_i w_i) F` (`StyleBankNet.fuse_banks`): a one-hot
  vector picks one style, and alpha scales the vector. One-layer banks are linear in their
  weights, so their kernels are mixed instead and one convolution runs whatever S is.

  Args:
    params: StyleBank parameters with all banks in `banks` (`merge_new_banks`).
    config: its StyleBankConfig.
    weights: `[S]` default bank weights (`stylebank.inference.bank_weights`, alpha included).
  """
  banks = [params["banks"][bank_name(i)] for i in range(len(params["banks"]))]
  g = Graph("stylebank")
  x, hw = g.pad_to_multiple(INPUT, 4)
  x = g.affine(x, config.pixel_scale, 0.0)
  for i, (channels, stride) in enumerate(zip(config.channels(), (1, 2, 2))):
    x = g.conv_layer(x, params["encoder"][f"conv{i + 1}"], strides=stride)
    x = g.relu(g.instance_norm(x, params["encoder"][f"norm{i + 1}"], channels))
  w = "bank_weights"
  keep = g.op("Sub", [g.const(1.0), g.op("ReduceSum", [w, g.const([0], dtype=np.int64)],
                                         keepdims=1)])
  fused = g.op("Mul", [x, keep])
  if config.bank_layers == 1:
    kernel = np.stack([np.asarray(b["conv1"]["conv"]["kernel"], np.float32).transpose(3, 2, 0, 1)
                       for b in banks])  # [S, O, I, k, k]
    bias = np.stack([np.asarray(b["conv1"]["conv"]["bias"], np.float32) for b in banks])
    fused = g.add(fused, g.conv(x, _mix(g, w, kernel), _mix(g, w, bias), config.bank_kernel))
  else:
    for i, bank in enumerate(banks):
      y = x
      for layer in range(config.bank_layers):
        if layer:
          y = g.relu(g.instance_norm(y, bank[f"norm{layer}"], config.channels()[2]))
        y = g.conv_layer(y, bank[f"conv{layer + 1}"])
      w_i = g.op("Slice", [w, g.const([i], dtype=np.int64), g.const([i + 1], dtype=np.int64)])
      fused = g.add(fused, g.op("Mul", [y, w_i]))
  x = fused
  dec = params["decoder"]
  for i, channels in enumerate(config.channels()[1::-1]):
    if config.upsample == "transpose":
      x = g.conv_transpose(x, dec[f"up{i + 1}"], strides=2, padding=1, output_padding=1)
    else:
      x = g.conv_layer(x, dec[f"up{i + 1}"], upsample=2)
    x = g.relu(g.instance_norm(x, dec[f"norm{i + 1}"], channels))
  x = g.affine(g.conv_layer(x, dec["out"]), 1.0 / config.pixel_scale, config.output_offset)
  out = g.clip01(g.crop(x, hw))
  return g.model(INPUT, out, OUTPUT, f"StyleBank (Chen et al. 2017), {len(banks)} styles; "
                 f"{_LAYOUT}; bank_weights: [S] linear fusion of the banks",
                 {"method": "stylebank", "layout": "NCHW RGB [0, 1]", "styles": str(len(banks))},
                 extra_inputs=[(w, [len(banks)], np.asarray(weights, np.float32))])


def _mix(g: Graph, weights: str, stacked: np.ndarray) -> str:
  """`sum_i weights[i] * stacked[i]` in the graph: `[S] x [S, ...] -> [...]`."""
  flat = g.op("MatMul", [g.op("Unsqueeze", [weights, g.const([0], dtype=np.int64)]),
                         g.const(stacked.reshape(stacked.shape[0], -1))])
  return g.op("Reshape", [flat, g.const(stacked.shape[1:], dtype=np.int64)])


def magenta(params: Any, config: MagentaConfig, loss_net: vgg.LossNet, alpha: float = 1.0) -> Any:
  """A trained Magenta model (`jaxstyle.methods.magenta`) as an ONNX ModelProto for any style.

  Inputs as `adain`'s: `content`, `style` `[1, 3, h, w]` and `alpha`, here the identity
  interpolation of the embeddings `alpha S(style) + (1 - alpha) S(content)`. The style predictor
  (the VGG's pooled features, the bottleneck and every layer's gamma/beta heads) is in the graph.

  Args:
    params: ArbitraryStyleNet parameters.
    config: its MagentaConfig.
    loss_net: the VGG it was trained with, with the configured pooling (`loss_net_for`).
    alpha: the default of the `alpha` input.
  """
  g = Graph("magenta")
  layers = list(config.predictor_layers)

  def embed(image):
    feats = _vgg_features(g, image, loss_net, layers)
    means = [g.op("ReduceMean", [feats[k]], axes=[2, 3], keepdims=0) for k in layers]
    pooled = g.op("Log", [g.affine(g.relu(g.op("Concat", means, axis=1)), 1.0, 1.0)])  # log1p
    return _dense(g, pooled, params["predictor"]["bottleneck"])

  e_style, e_content = embed("style"), embed(INPUT)
  e = g.add(e_content, g.op("Mul", [g.op("Sub", [e_style, e_content]), "alpha"]))
  x, hw = g.pad_to_multiple(INPUT, 4)
  t = params["transformer"]

  def cond_norm(h, name):
    channels = normalized_layers(config)[name]
    gamma, beta = (g.op("Unsqueeze", [_dense(g, e, params["norm_params"][f"{name}_{part}"]),
                                      g.const([2, 3], dtype=np.int64)])
                   for part in ("gamma", "beta"))
    return g.add(g.op("Mul", [g.instance_norm(h, None, channels), gamma]), beta)

  c1, c2, c3 = config.channels()
  for name, channels, stride in (("contract1", c1, 1), ("contract2", c2, 2),
                                 ("contract3", c3, 2)):
    x = g.conv_layer(x, t[name], strides=stride)
    x = g.relu(g.instance_norm(x, t[f"{name}_norm"], channels))
  for i in range(1, config.num_residual + 1):
    h = g.relu(cond_norm(g.conv_layer(x, t[f"res{i}_conv1"]), f"res{i}_conv1"))
    x = g.add(x, cond_norm(g.conv_layer(h, t[f"res{i}_conv2"]), f"res{i}_conv2"))
  for name in ("expand1", "expand2"):
    x = g.relu(cond_norm(g.conv_layer(x, t[name], upsample=2), name))
  x = g.op("Sigmoid", [cond_norm(g.conv_layer(x, t["expand3"]), "expand3")])
  out = g.clip01(g.crop(x, hw))
  return g.model(INPUT, out, OUTPUT, f"Ghiasi et al. 2017 arbitrary stylization, any style: "
                 f"{_LAYOUT}; style: [1, 3, h, w] RGB [0, 1]; alpha: scalar, 0 the content's own "
                 "embedding .. 1 the style's", {"method": "magenta", "layout": "NCHW RGB [0, 1]"},
                 extra_inputs=[("style", [1, 3, "style_height", "style_width"], None),
                               ("alpha", [], alpha)])


def _dense(g: Graph, x: str, p: Any) -> str:
  """A flax `nn.Dense` on `[N, D]`."""
  return g.add(g.op("MatMul", [x, g.const(p["kernel"])]), g.const(p["bias"]))
