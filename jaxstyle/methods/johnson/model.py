"""Johnson et al. 2016 image transformation network and its config.

The network follows pytorch/examples `fast_neural_style/transformer_net.py` (REFERENCES.md
section 2): reflection padding, instance norm, nearest-neighbour upsampling + convolution instead of
the paper's transposed convolutions (no checkerboard artifacts). The output layer is
fast-neural-style's scaled tanh by default (`output`; 'linear' is pytorch/examples' plain
convolution). It works on 0-255 pixels like those references; the API boundary is RGB in [0, 1].
"""
import dataclasses
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import nn as jsnn
from jaxstyle import vgg

_MEAN_RGB = np.asarray(vgg.IMAGENET_MEAN, np.float32)  # fast-neural-style's centre of the tanh


@dataclasses.dataclass(frozen=True)
class JohnsonConfig:
  """Architecture and loss settings of a Johnson model; `--set key=value` overrides any field.

  Defaults follow jcjohnson/fast-neural-style (`train.lua`), which, like our default HED VGG16 loss
  net, uses a Caffe VGG16 on BGR 0-255 inputs: content at relu3_3 (weight 1), style at relu1_2,
  relu2_2, relu3_3, relu4_3 (weight 5, Gram divided by C*H*W), TV 1e-6 on 0-255 pixels, Adam lr
  1e-3, 256 px style image.
  """
  width: float = 1.0                      # channel multiplier: 32/64/128 at 1.0
  num_residual: int = 5
  content_layers: Tuple[str, ...] = ("relu3_3",)
  style_layers: Tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
  content_weight: float = 1.0
  style_weight: float = 5.0
  style_layer_weights: Tuple[float, ...] = ()   # one per style layer; () = all 1
  tv_weight: float = 1e-6
  gram_normalize: str = "chw"
  # Each layer's loss / its target's mean square (see below). Off by default: the raw weights above
  # are the ones checked by hand to stylise visibly with the HED VGG16; MSG-Net and StyleBank need it on.
  normalize_layers: bool = False
  learning_rate: float = 1e-3
  style_image: str = ""                   # path; "" = the first image of --style_dir (or a sample)
  style_size: int = 256                   # long side of the style image when computing its Grams
  pixel_scale: float = 255.0              # the network sees x * pixel_scale and returns that range
  # fast-neural-style's output layer: tanh x 150 around the ImageNet mean pixel (paper: "scaled
  # tanh"). It starts at a mean-grey image of the right scale; a linear output (pytorch/examples)
  # starts black and spends its first thousand steps growing to the 0-255 range.
  output: str = "tanh"                    # tanh | linear
  tanh_constant: float = 150.0            # on the pixel_scale (0-255) range

  def channels(self) -> Tuple[int, int, int]:
    return tuple(max(1, int(round(c * self.width))) for c in (32, 64, 128))


class TransformerNet(nn.Module):
  """The image transformation network f_W of Johnson et al. (Fig. 2; supplementary Table 1).

  c9s1-32, d64, d128, R128 x5, u64, u32, c9s1-3 with upsample+conv for `u` (widths scale with the
  config's `width`).

  Attributes:
    config: JohnsonConfig (only the architecture fields are used).
    dtype: computation dtype (parameters stay float32).
  """
  config: JohnsonConfig
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x01: jax.Array) -> jax.Array:
    """Stylizes images.

    Args:
      x01: [B, H, W, 3] RGB in [0, 1].

    Returns:
      [B, H', W', 3] float32, roughly in [0, 1] but not clipped (the loss sees the raw output).
      H' = H when H is a multiple of 4.
    """
    c1, c2, c3 = self.config.channels()
    dt = self.dtype
    scale = self.config.pixel_scale
    x = (x01 * scale).astype(dt or jnp.float32)

    def down(y, features, kernel, stride, name):
      y = jsnn.ConvLayer(features, kernel, strides=stride, dtype=dt, name=f"{name}_conv")(y)
      return nn.relu(jsnn.InstanceNorm(dtype=dt, name=f"{name}_norm")(y))

    x = down(x, c1, 9, 1, "conv1")   # [B, H, W, c1]
    x = down(x, c2, 3, 2, "conv2")   # [B, H/2, W/2, c2]
    x = down(x, c3, 3, 2, "conv3")   # [B, H/4, W/4, c3]
    for i in range(self.config.num_residual):
      x = jsnn.ResidualBlock(c3, dtype=dt, name=f"res{i + 1}")(x)
    for name, features in (("up1", c2), ("up2", c1)):  # [B, H/2, W/2, c2], then [B, H, W, c1]
      x = jsnn.UpsampleConv(features, 3, dtype=dt, name=f"{name}_conv")(x)
      x = nn.relu(jsnn.InstanceNorm(dtype=dt, name=f"{name}_norm")(x))
    x = jsnn.ConvLayer(3, 9, strides=1, dtype=dt, name="out_conv")(x).astype(jnp.float32)
    if self.config.output == "tanh":
      return (self.config.tanh_constant * jnp.tanh(x) + _MEAN_RGB * 255.0) / scale
    return x / scale
