"""AdaIN (Huang & Belongie, ICCV 2017): config, decoder and the encode/AdaIN/decode pipeline.

The encoder f is a frozen VGG up to relu4_1 (`jaxstyle.vgg.LossNet`); the only trained part is the
decoder g, which mirrors the encoder (REFERENCES.md section 5, xunhuang1995/AdaIN-style
`train.lua`):
reflection-padded 3x3 convolutions with ReLU, nearest x2 upsampling where the encoder pools, no
normalisation, and a last convolution to RGB without activation.
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

ENCODER_LAYER = "relu4_1"


@dataclasses.dataclass(frozen=True)
class AdaINConfig:
  """Architecture, loss and optimiser settings of AdaIN; `--set key=value` overrides any field.

  Defaults follow naoto0804/pytorch-AdaIN (mean-squared-error losses, content weight 1, style weight
  10, eps 1e-5) and the Lua reference (Adam lr 1e-4, inverse-time decay 5e-5, reflection padding).
  Those weights were tuned for the "normalised" VGG19 whose every channel has unit mean activation;
  our loss nets are raw Caffe / torchvision VGGs whose layers differ by orders of magnitude. With
  `normalize_layers` (default) each layer's loss is divided by the squared mean activation of that
  layer, measured once on the first training batch, which puts any loss net on the normalised
  VGG's scale so the reference weights apply.
  """
  width: float = 1.0                        # decoder channel multiplier: 64/128/256 at 1.0
  encoder_padding: str = "reflect"          # the reference swaps VGG's zero padding for reflection
  style_layers: Tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
  style_layer_weights: Tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
  content_weight: float = 1.0
  style_weight: float = 10.0
  normalize_layers: bool = True
  eps: float = 1e-5
  learning_rate: float = 1e-4
  lr_decay: float = 5e-5                    # lr / (1 + lr_decay * step), as the reference
  load_size: int = 0                        # short side before random crops; 0 = 2 * image_size
                                            # (the reference resizes to 512, crops 256)

  def channels(self) -> Tuple[int, int, int]:
    """Decoder widths mirroring VGG blocks 1-3 (64, 128, 256 at width 1)."""
    return tuple(max(1, int(round(c * self.width))) for c in vgg.WIDTHS[:3])

  def validate(self, depth: int = 16) -> "AdaINConfig":
    vgg.check_layers(self.style_layers, depth)
    if len(self.style_layer_weights) != len(self.style_layers):
      raise ConfigError(f"style_layer_weights has {len(self.style_layer_weights)} values for "
                        f"{len(self.style_layers)} style_layers")
    if self.encoder_padding not in ("reflect", "zero"):
      raise ConfigError(f"encoder_padding must be reflect or zero, got {self.encoder_padding!r}")
    if self.width <= 0 or self.learning_rate <= 0:
      raise ConfigError("width and learning_rate must be positive")
    return self


class Decoder(nn.Module):
  """The AdaIN decoder g: relu4_1 features back to an RGB image.

  For VGG19 (reference): conv 512->256, up, 3x conv 256, conv 256->128, up, conv 128, conv 128->64,
  up, conv 64, conv 64->3. For VGG16 block 3 has one convolution fewer, and so does its mirror.

  Attributes:
    channels: widths of the mirrored VGG blocks 1-3 (64, 128, 256 in the reference).
    depth: VGG depth of the encoder (16 or 19); sets the convolutions per mirrored block.
    dtype: compute dtype (parameters stay float32).
  """
  channels: Sequence[int] = (64, 128, 256)
  depth: int = 19
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    """Decodes `[B, h, w, 512]` features to `[B, 8h, 8w, 3]` RGB, roughly in [0, 1], unclipped."""
    c = self.channels
    x = t.astype(self.dtype or jnp.float32)
    x = nn.relu(conv.ConvLayer(c[2], 3, dtype=self.dtype, name="conv4_1")(x))
    for block in (3, 2, 1):
      convs = vgg.BLOCKS[self.depth][block - 1]
      for i in range(convs, 0, -1):  # mirror order: conv{b}_{n} ... conv{b}_1
        last_of_block = i == 1
        features = (c[block - 2] if block > 1 else 3) if last_of_block else c[block - 1]
        # Each block starts with 2x nearest upsampling, run inside its first convolution.
        x = conv.ConvLayer(features, 3, dtype=self.dtype, upsample=2 if i == convs else 1,
                           name=f"conv{block}_{i}")(x)
        if not (block == 1 and last_of_block):
          x = nn.relu(x)
    return x.astype(jnp.float32)


def make_decoder(config: AdaINConfig, depth: int, dtype=None) -> Decoder:
  return Decoder(channels=config.channels(), depth=depth, dtype=dtype)


def encoder_net(loss_net: vgg.LossNet, config: AdaINConfig) -> vgg.LossNet:
  """The loss net as AdaIN's encoder: max pooling, and the configured padding."""
  return loss_net.replace_options(pooling="max", padding=config.encoder_padding)


def encode(loss_net: vgg.LossNet, x01: jax.Array, layers: Sequence[str] = (ENCODER_LAYER,),
           dtype=None) -> Dict[str, jax.Array]:
  """VGG features of `[B, H, W, 3]` images in [0, 1], as float32."""
  feats = loss_net.features(x01, tuple(layers), dtype=dtype)
  return {k: v.astype(jnp.float32) for k, v in feats.items()}


def downsample_mask(mask: jax.Array, factor: int) -> jax.Array:
  """Area-averages a mask `[B, H, W]` to the feature grid `[B, H/factor, W/factor]`."""
  b, h, w = mask.shape
  hh, ww = h // factor, w // factor
  m = mask[:, :hh * factor, :ww * factor].reshape(b, hh, factor, ww, factor)
  return m.mean(axis=(2, 4))


def blend_targets(content_feat: jax.Array, style_feats: Sequence[jax.Array],
                  weights: Sequence[float], alpha: float = 1.0,
                  masks: Optional[Sequence[jax.Array]] = None, eps: float = 1e-5) -> jax.Array:
  """The decoder input for one or several styles.

  * style interpolation (reference `-styleInterpWeights`): t = sum_i w_i AdaIN(f(c), f(s_i));
  * spatial control (reference `-mask`): t = sum_i m_i AdaIN_{m_i}(f(c), f(s_i)), where the content
    statistics of style i are taken over its region m_i only;
  * content-style trade-off: t = alpha * t + (1 - alpha) * f(c).

  Args:
    content_feat: `[B, h, w, C]` encoder features of the content.
    style_feats: per style `[1 or B, h_i, w_i, C]` encoder features.
    weights: per style blend weight (ignored with masks: each region has one style).
    alpha: 1 = full style, 0 = the content's own features.
    masks: optional per style `[B, h, w]` region weights on the feature grid.
    eps: AdaIN variance epsilon.

  Returns:
    `[B, h, w, C]` target features t.
  """
  t = jnp.zeros_like(content_feat)
  for i, sf in enumerate(style_feats):
    if masks is None:
      t = t + weights[i] * adaptive.adain(content_feat, sf, eps)
    else:
      region = adaptive.adain(content_feat, sf, eps, content_mask=masks[i])
      t = t + masks[i][..., None] * region
  return alpha * t + (1.0 - alpha) * content_feat
