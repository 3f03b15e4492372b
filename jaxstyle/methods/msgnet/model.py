"""MSG-Net model (Zhang & Dana, "Multi-style Generative Network for Real-time Transfer",
arXiv 1703.06953).

A Siamese encoder turns the style image into a Gram matrix G and the content image into features X;
the CoMatch (Inspiration) layer mixes X towards G; a stack of bottlenecks and upsampling bottlenecks
decodes the result. The layout follows the reference `experiments/net.py` (`Net`, ngf=128 as in its
`option.py`), which works on BGR 0-255 images; our boundary is RGB [0, 1] and the conversion happens
inside the model.
"""
import dataclasses
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstyle import losses
from jaxstyle.nn.bottleneck import Bottleneck, UpBottleneck
from jaxstyle.nn.comatch import CoMatch
from jaxstyle.nn.conv import ConvLayer
from jaxstyle.nn.norms import InstanceNorm

Array = jax.Array
EXPANSION = 4  # Bottleneck output/inner width ratio (the reference's `expansion`).
# The encoder downsamples twice and the decoder upsamples twice: sizes must be multiples of 4.
SIZE_MULTIPLE = 4
# The decoder's reflection-padded 3x3 convolutions need at least 2x2 features, i.e. 8x8 images.
MIN_SIZE = 8


@dataclasses.dataclass(frozen=True)
class MSGNetConfig:
  """Architecture, loss and data settings; `--set key=value` overrides any field.

  Defaults follow zhanghang1989/PyTorch-Multi-Style-Transfer (`experiments/net.py`, `option.py`,
  `main.py`): ngf 128, 6 bottlenecks, instance norm without affine parameters, content relu2_2
  (weight 1), style relu1_2/relu2_2/relu3_3/relu4_3 (weight 5, Gram divided by C*H*W, MSE),
  Adam lr 1e-3, no TV term. Our default loss net (HED VGG16) takes the same Caffe BGR 0-255 input
  as the reference's `vgg16.t7`. `style_sizes` are the paper's three training style sizes
  (Sec. 5: 256, 512, 768), drawn at random per step for brush-size robustness.
  """
  ngf: int = 128                      # bottleneck inner width; CoMatch acts on ngf * 4 channels
  stem_features: int = 64             # 7x7 stem conv width; encoder/decoder widths derive from it
  n_blocks: int = 6                   # bottlenecks after CoMatch
  norm_affine: bool = False           # the reference's nn.InstanceNorm2d has no affine params
  content_layers: Tuple[str, ...] = ("relu2_2",)
  style_layers: Tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
  content_weight: float = 1.0
  style_weight: float = 5.0
  tv_weight: float = 0.0
  gram_normalize: str = "chw"
  # Each layer's loss / its target's mean square (losses/perceptual.py): the weights then act as
  # relative balances, not the reference's raw scale; false = the reference's raw losses, which
  # the short CPU runs of docs/training.md used.
  normalize_layers: bool = True
  learning_rate: float = 1e-3
  style_sizes: Tuple[int, ...] = (256, 512, 768)  # square style sizes drawn per training step
  pixel_scale: float = 255.0          # the network sees BGR * pixel_scale, returns that range
  # Added to the last conv so an untrained network outputs mid-grey rather than black (the
  # reference starts at 0, i.e. black, and needs many steps to brighten); 0 = the reference.
  output_offset: float = 0.5

  def widths(self) -> Tuple[int, int, int]:
    """(stem, encoder block 1 inner, up blocks inner): (64, 32, 16) at the reference's 64."""
    s = self.stem_features
    return s, max(1, s // 2), max(1, s // 4)

  @property
  def comatch_features(self) -> int:
    return self.ngf * EXPANSION


def to_network_input(x01: Array, scale: float) -> Array:
  """RGB [0, 1] -> the reference's BGR [0, scale] (no mean subtraction)."""
  return x01[..., ::-1] * scale


def from_network_output(y: Array, scale: float) -> Array:
  """BGR [0, scale] -> RGB [0, 1] (not clipped)."""
  return (y[..., ::-1] / scale).astype(jnp.float32)


def pad_to_multiple(x: Array, multiple: int = SIZE_MULTIPLE) -> Tuple[Array, Tuple[int, int]]:
  """Pads H and W at the bottom/right to a multiple of `multiple` (and at least MIN_SIZE).

  Reflection where the image is large enough, else edge replication. Returns (padded, (H, W)).
  """
  h, w = x.shape[1:3]
  ph = max(MIN_SIZE, h + (-h % multiple)) - h
  pw = max(MIN_SIZE, w + (-w % multiple)) - w
  if ph or pw:
    mode = "reflect" if h > ph and w > pw else "edge"
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
  return x, (h, w)


class SiameseEncoder(nn.Module):
  """The shared encoder (`model1`) applied to both the style and the content image.

  7x7 conv(stem) -> IN -> ReLU -> Bottleneck(stem/2 x4, stride 2) -> Bottleneck(ngf x4, stride 2):
  `[B, H, W, 3] (BGR 0-255) -> [B, H/4, W/4, ngf*4]`.
  """
  config: MSGNetConfig
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg, dt = self.config, self.dtype
    stem, inner, _ = cfg.widths()
    x = ConvLayer(stem, 7, dtype=dt, name="stem")(x.astype(dt or jnp.float32))
    x = nn.relu(InstanceNorm(use_scale=cfg.norm_affine, use_bias=cfg.norm_affine, dtype=dt,
                             name="stem_norm")(x))
    x = Bottleneck(inner, strides=2, downsample=True, norm_affine=cfg.norm_affine, dtype=dt,
                   name="down1")(x)
    return Bottleneck(cfg.ngf, strides=2, downsample=True, norm_affine=cfg.norm_affine, dtype=dt,
                      name="down2")(x)


class Decoder(nn.Module):
  """After CoMatch: n_blocks Bottleneck(ngf) -> UpBottleneck(stem/2) -> UpBottleneck(stem/4) ->
  IN -> ReLU -> 7x7 conv to 3 channels: `[B, h, w, ngf*4] -> [B, 4h, 4w, 3]` (BGR 0-255 range).
  """
  config: MSGNetConfig
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg, dt = self.config, self.dtype
    _, inner, up_inner = cfg.widths()
    for i in range(cfg.n_blocks):
      x = Bottleneck(cfg.ngf, norm_affine=cfg.norm_affine, dtype=dt, name=f"block{i}")(x)
    x = UpBottleneck(inner, norm_affine=cfg.norm_affine, dtype=dt, name="up1")(x)
    x = UpBottleneck(up_inner, norm_affine=cfg.norm_affine, dtype=dt, name="up2")(x)
    x = nn.relu(InstanceNorm(use_scale=cfg.norm_affine, use_bias=cfg.norm_affine, dtype=dt,
                             name="out_norm")(x))
    y = ConvLayer(3, 7, dtype=dt, name="out_conv")(x)
    return y + jnp.asarray(cfg.output_offset * cfg.pixel_scale, y.dtype)


class MSGNet(nn.Module):
  """Multi-style generative network.

  Use `style_gram` (method) to encode style images into G, then `__call__(content, gram)`;
  Grams of several styles can be blended linearly before the call.

  Attributes:
    config: MSGNetConfig (architecture fields).
    dtype: computation dtype (parameters stay float32).
  """
  config: MSGNetConfig
  dtype: Optional[Any] = None

  def setup(self):
    self.encoder = SiameseEncoder(self.config, self.dtype)
    self.comatch = CoMatch(self.config.comatch_features, dtype=self.dtype or jnp.float32)
    self.decoder = Decoder(self.config, self.dtype)

  def style_gram(self, style01: Array) -> Array:
    """Target Gram of style images: `[B, h, w, 3]` RGB [0, 1] -> `[B, C, C]` float32 (C = ngf*4)."""
    style, _ = pad_to_multiple(style01)
    # The reference `GramMatrix` (divided by C*H*W); float32 even under bf16 compute.
    return losses.gram_matrix(self.encoder(to_network_input(style, self.config.pixel_scale)), "chw")

  def __call__(self, content01: Array, gram: Array) -> Array:
    """Stylizes `content01` `[B, H, W, 3]` (RGB [0, 1]) towards `gram` `[B or 1, C, C]`.

    Returns `[B, H, W, 3]` float32 RGB, roughly in [0, 1] but not clipped (the loss sees the raw
    output). Any H, W works: the input is reflection-padded to a multiple of 4 and cropped back.
    """
    x, (h, w) = pad_to_multiple(content01)
    f = self.encoder(to_network_input(x, self.config.pixel_scale))
    y = self.decoder(self.comatch(f, gram))
    return from_network_output(y[:, :h, :w], self.config.pixel_scale)
