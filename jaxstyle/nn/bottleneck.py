"""Pre-activation bottleneck blocks of MSG-Net (Zhang & Dana, arXiv 1703.06953).

`Bottleneck` is the pre-activation residual unit of He et al. ("Identity Mappings in Deep Residual
Networks", arXiv 1603.05027) with expansion 4: norm-ReLU-1x1, norm-ReLU-3x3 (strided when
downsampling), norm-ReLU-1x1. `UpBottleneck` is MSG-Net's "upsample residual block": the 3x3
convolution and the residual path both upsample (nearest neighbour then convolution), which passes
an identity-like path through the whole generator. Both follow the reference
`experiments/net.py` (`Bottleneck`, `UpBottleneck`): 1x1 convolutions are unpadded, 3x3 ones are
reflection padded, the norm is instance norm without affine parameters (the default of
`nn.InstanceNorm2d`).
"""
from typing import Any, Optional

import flax.linen as nn
import jax

from jaxstyle.nn.conv import ConvLayer, UpsampleConv
from jaxstyle.nn.norms import InstanceNorm

Array = jax.Array


def _norm_relu(x: Array, affine: bool, dtype: Any, name: str) -> Array:
  x = InstanceNorm(use_scale=affine, use_bias=affine, dtype=dtype, name=name)(x)
  return nn.relu(x)


class Bottleneck(nn.Module):
  """Pre-activation bottleneck: `[B, H, W, Cin] -> [B, ceil(H/s), ceil(W/s), planes * expansion]`.

  Attributes:
    planes: width of the inner 1x1 and 3x3 convolutions; the block outputs `planes * expansion`.
    strides: stride of the 3x3 convolution and of the 1x1 residual convolution.
    downsample: use a 1x1 (strided) convolution on the residual path. None = whenever the stride or
      the channel count changes (the reference passes it explicitly for the encoder blocks).
    expansion: output/inner width ratio (4, as in ResNet-50 and MSG-Net).
    norm_affine: learned scale/shift in the instance norms (the reference has none).
    dtype: compute dtype; parameters stay float32.
  """
  planes: int
  strides: int = 1
  downsample: Optional[bool] = None
  expansion: int = 4
  norm_affine: bool = False
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_features = self.planes * self.expansion
    downsample = self.downsample
    if downsample is None:
      downsample = self.strides != 1 or x.shape[-1] != out_features
    if downsample:
      residual = ConvLayer(out_features, 1, self.strides, padding="none", dtype=self.dtype,
                           name="residual")(x)
    else:
      residual = x
    y = _norm_relu(x, self.norm_affine, self.dtype, "norm1")
    y = ConvLayer(self.planes, 1, padding="none", dtype=self.dtype, name="conv1")(y)
    y = _norm_relu(y, self.norm_affine, self.dtype, "norm2")
    y = ConvLayer(self.planes, 3, self.strides, padding="reflect", dtype=self.dtype,
                  name="conv2")(y)
    y = _norm_relu(y, self.norm_affine, self.dtype, "norm3")
    y = ConvLayer(out_features, 1, padding="none", dtype=self.dtype, name="conv3")(y)
    return residual.astype(y.dtype) + y


class UpBottleneck(nn.Module):
  """Upsampling bottleneck: `[B, H, W, Cin] -> [B, s*H, s*W, planes * expansion]`.

  Residual path: nearest upsampling then a 1x1 convolution. Main path: norm-ReLU-1x1,
  norm-ReLU-(nearest upsampling, reflection-padded 3x3), norm-ReLU-1x1.

  Attributes:
    planes: inner width; the block outputs `planes * expansion`.
    upsample: integer nearest-neighbour factor (2 in MSG-Net).
    expansion: output/inner width ratio (4).
    norm_affine: learned scale/shift in the instance norms (the reference has none).
    dtype: compute dtype; parameters stay float32.
  """
  planes: int
  upsample: int = 2
  expansion: int = 4
  norm_affine: bool = False
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out_features = self.planes * self.expansion
    residual = UpsampleConv(out_features, 1, upsample=self.upsample, padding="none",
                            dtype=self.dtype, name="residual")(x)
    y = _norm_relu(x, self.norm_affine, self.dtype, "norm1")
    y = ConvLayer(self.planes, 1, padding="none", dtype=self.dtype, name="conv1")(y)
    y = _norm_relu(y, self.norm_affine, self.dtype, "norm2")
    y = UpsampleConv(self.planes, 3, upsample=self.upsample, padding="reflect", dtype=self.dtype,
                     name="conv2")(y)
    y = _norm_relu(y, self.norm_affine, self.dtype, "norm3")
    y = ConvLayer(out_features, 1, padding="none", dtype=self.dtype, name="conv3")(y)
    return residual.astype(y.dtype) + y
