"""Ghiasi et al. 2017 arbitrary stylization ("Magenta"): config, style predictor, transformer.

Ghiasi, Lee, Kudlur, Dumoulin, Shlens, "Exploring the structure of a real-time, arbitrary neural
artistic stylization network" (BMVC 2017); reference code magenta/magenta
`models/arbitrary_image_stylization` (REFERENCES.md section 4).

Two differences from the reference, both deliberate:
* Style prediction network. The paper runs Inception-v3 up to Mixed_6e, takes the spatial mean and
  maps it through a 1x1 convolution to a 100-d bottleneck. We do not ship Inception weights, so the
  frozen VGG loss network stands in: the spatial means of its relu features (by default the four
  style-loss layers, 960 values for VGG16) go through `log1p` (raw Caffe activations span two orders
  of magnitude between layers) and a trained 1x1 convolution (a Dense layer on the pooled vector) to
  the 100-d bottleneck; one more 1x1 convolution per normalised layer gives its gamma and beta.
* Contract path normalisation. The reference uses batch norm in the three downsampling
  convolutions; we use instance norm with a learned affine map there, which behaves the same for
  every batch size (no running statistics, no train/test gap) and is what the conditional layers
  use anyway.
Conditional instance norm with the predicted gamma/beta sits on the 13 layers of the reference: both
convolutions of the five residual blocks and the three expand convolutions (64, 32, 3).
"""
import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.nn import adaptive
from jaxstyle.nn import conv
from jaxstyle.nn import norms


@dataclasses.dataclass(frozen=True)
class MagentaConfig:
  """Architecture, loss and optimiser settings; `--set key=value` overrides any field.

  Defaults follow the Magenta code (`arbitrary_image_stylization_train.py` and `_losses.py`): VGG16
  loss network with average pooling; content at the last ReLU of block 3 (relu3_3) with weight 1;
  style at the last ReLU of blocks 1-4 with 0.5e-3 each on Grams divided by H*W; total variation
  1e4; 100-d bottleneck; Adam. Their VGG16 is TF-slim's (converted from Caffe VGG16, RGB 0-255
  minus the mean), the same activation scale as our default Caffe-convention HED VGG16, so the
  weights carry over unscaled. The reference learning rate 1e-5 is meant for millions of steps;
  we default to 1e-4 (the same Adam, a shorter schedule).
  """
  width: float = 1.0                      # transformer channel multiplier: 32/64/128 at 1.0
  num_residual: int = 5
  bottleneck: int = 100
  predictor_layers: Tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
  content_layers: Tuple[str, ...] = ("relu3_3",)
  style_layers: Tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
  content_weight: float = 1.0
  style_weight: float = 0.5e-3
  tv_weight: float = 1e4
  loss_pooling: str = "avg"
  learning_rate: float = 1e-4
  load_size: int = 0                      # short side before random crops; 0 = 2 * image_size

  def channels(self) -> Tuple[int, int, int]:
    return tuple(max(1, int(round(c * self.width))) for c in (32, 64, 128))

  def validate(self, depth: int = 16) -> "MagentaConfig":
    for layers in (self.predictor_layers, self.content_layers, self.style_layers):
      vgg.check_layers(layers, depth)
    if self.loss_pooling not in ("avg", "max"):
      raise ConfigError(f"loss_pooling must be avg or max, got {self.loss_pooling!r}")
    if self.width <= 0 or self.bottleneck <= 0 or self.num_residual < 0:
      raise ConfigError("width and bottleneck must be positive, num_residual >= 0")
    return self


def normalized_layers(config: MagentaConfig) -> Dict[str, int]:
  """Names and widths of the conditionally normalised layers, in network order."""
  _, c2, c3 = config.channels()
  c1 = config.channels()[0]
  layers = {}
  for i in range(1, config.num_residual + 1):
    layers[f"res{i}_conv1"] = c3
    layers[f"res{i}_conv2"] = c3
  layers.update({"expand1": c2, "expand2": c1, "expand3": 3})
  return layers


def pooled_features(feats: Dict[str, jax.Array], layers: Sequence[str]) -> jax.Array:
  """The style predictor's input: `log1p` of the spatial mean of each relu layer, concatenated.

  Args:
    feats: {layer: [B, h, w, C]} non-negative (post-ReLU) VGG activations.
    layers: which layers, in order.

  Returns:
    `[B, sum C]` float32.
  """
  means = [jnp.mean(feats[k].astype(jnp.float32), axis=(1, 2)) for k in layers]
  return jnp.log1p(jnp.maximum(jnp.concatenate(means, axis=-1), 0.0))


class StylePredictor(nn.Module):
  """Style prediction network P (paper Fig. 2), VGG stand-in: pooled features -> embedding S.

  Attributes:
    bottleneck: embedding size (100 in the paper).
  """
  bottleneck: int = 100

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    """`[B, D]` pooled features -> `[B, bottleneck]` embedding (linear, as the reference)."""
    return nn.Dense(self.bottleneck, name="bottleneck")(pooled)


class StyleNormParams(nn.Module):
  """One linear map per normalised layer: embedding `[B, E]` -> (gamma `[B, C]`, beta `[B, C]`).

  Gamma's bias starts at 1 and the maps at small weights, so an untrained network starts as plain
  instance norm whatever the embedding (the reference trains from raw outputs; this only eases the
  start).

  Attributes:
    layers: {layer name: channels}.
  """
  layers: Dict[str, int]

  @nn.compact
  def __call__(self, embedding: jax.Array) -> Dict[str, Tuple[jax.Array, jax.Array]]:
    small = nn.initializers.normal(0.01)
    out = {}
    for name, channels in self.layers.items():
      gamma = nn.Dense(channels, kernel_init=small, bias_init=nn.initializers.ones,
                       name=f"{name}_gamma")(embedding)
      beta = nn.Dense(channels, kernel_init=small, name=f"{name}_beta")(embedding)
      out[name] = (gamma, beta)
    return out


class TransformerNet(nn.Module):
  """Style transfer network T (paper Fig. 2), conditioned by per-layer gamma/beta.

  Contract: 9x9 s1 32, 3x3 s2 64, 3x3 s2 128 (instance norm, ReLU); 5 residual blocks of 128 with
  conditional instance norm after both convolutions; expand: nearest x2 + 3x3 conv 64, nearest x2 +
  3x3 conv 32 (conditional norm, ReLU), 9x9 conv 3 (conditional norm, sigmoid). Reflection padding
  throughout. `[B, H, W, 3] -> [B, H, W, 3]` for H, W multiples of 4.

  Attributes:
    config: MagentaConfig (architecture fields).
    dtype: compute dtype (parameters stay float32).
  """
  config: MagentaConfig
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x01: jax.Array, style_params: Dict[str, Tuple[jax.Array, jax.Array]]
               ) -> jax.Array:
    """Stylizes `[B, H, W, 3]` images in [0, 1] with `style_params[layer] = (gamma, beta)`."""
    c1, c2, c3 = self.config.channels()
    dt = self.dtype

    def cond_norm(h, name):
      gamma, beta = style_params[name]
      return adaptive.ConditionalInstanceNorm(dtype=dt, name=f"{name}_norm")(
          h, gamma=gamma, beta=beta)

    x = x01.astype(dt or jnp.float32)
    for name, features, kernel, stride in (("contract1", c1, 9, 1), ("contract2", c2, 3, 2),
                                           ("contract3", c3, 3, 2)):
      x = conv.ConvLayer(features, kernel, strides=stride, dtype=dt, name=name)(x)
      x = nn.relu(norms.InstanceNorm(dtype=dt, name=f"{name}_norm")(x))
    for i in range(1, self.config.num_residual + 1):
      h = conv.ConvLayer(c3, 3, dtype=dt, name=f"res{i}_conv1")(x)
      h = nn.relu(cond_norm(h, f"res{i}_conv1"))
      h = conv.ConvLayer(c3, 3, dtype=dt, name=f"res{i}_conv2")(h)
      x = x + cond_norm(h, f"res{i}_conv2")
    for name, features in (("expand1", c2), ("expand2", c1)):
      x = conv.UpsampleConv(features, 3, dtype=dt, name=name)(x)
      x = nn.relu(cond_norm(x, name))
    x = conv.ConvLayer(3, 9, dtype=dt, name="expand3")(x)
    return nn.sigmoid(cond_norm(x, "expand3").astype(jnp.float32))


class ArbitraryStyleNet(nn.Module):
  """The whole trained model: style predictor, per-layer gamma/beta heads and transformer.

  `embed` and `transform` are separate so inference can mix embeddings (style interpolation,
  identity interpolation) between the two.

  Attributes:
    config: MagentaConfig.
    dtype: compute dtype (parameters stay float32).
  """
  config: MagentaConfig
  dtype: Optional[Any] = None

  def setup(self):
    self.predictor = StylePredictor(self.config.bottleneck)
    self.norm_params = StyleNormParams(normalized_layers(self.config))
    self.transformer = TransformerNet(self.config, dtype=self.dtype)

  def embed(self, pooled: jax.Array) -> jax.Array:
    """`[B, D]` pooled VGG features of style images -> `[B, bottleneck]` style embeddings."""
    return self.predictor(pooled)

  def transform(self, content01: jax.Array, embedding: jax.Array) -> jax.Array:
    """Stylizes `[B, H, W, 3]` content with `[B, bottleneck]` embeddings -> `[B, H, W, 3]`."""
    return self.transformer(content01, self.norm_params(embedding))

  def __call__(self, content01: jax.Array, pooled: jax.Array) -> jax.Array:
    return self.transform(content01, self.embed(pooled))
