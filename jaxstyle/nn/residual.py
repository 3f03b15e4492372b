"""The residual block of Johnson et al.'s transformation network (arXiv 1603.08155, Gross & Wilber's
"Training and investigating residual nets" variant without the final ReLU).
"""
from typing import Any, Optional

import flax.linen as nn
import jax

from jaxstyle.nn.conv import ConvLayer
from jaxstyle.nn.norms import InstanceNorm

Array = jax.Array


class ResidualBlock(nn.Module):
  """conv - norm - ReLU - conv - norm, plus the identity skip.

  With 'reflect' or 'zero' padding the block keeps the spatial size:
  `[B, H, W, features] -> [B, H, W, features]` (pytorch/examples `ResidualBlock`). With padding 'none'
  both convolutions are unpadded and the skip is centre-cropped by `kernel_size - 1` pixels per side, as
  in fast-neural-style's `-padding_type reflect-start`: `[B, H, W, C] -> [B, H-2(k-1), W-2(k-1), C]`.

  Attributes:
    features: channels (input and output).
    kernel_size: square kernel side.
    norm: 'instance' (affine instance norm) or 'none'.
    padding: 'reflect' (default), 'zero' or 'none'.
    dtype: compute dtype (parameters stay float32).
  """
  features: int
  kernel_size: int = 3
  norm: str = "instance"
  padding: str = "reflect"
  dtype: Optional[Any] = None

  def _norm(self, name: str):
    if self.norm == "instance":
      return InstanceNorm(dtype=self.dtype, name=name)
    if self.norm == "none":
      return lambda x: x
    raise ValueError(f"norm must be 'instance' or 'none', got {self.norm!r}")

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.shape[-1] != self.features:
      raise ValueError(f"ResidualBlock({self.features}) got {x.shape[-1]} input channels")
    y = ConvLayer(self.features, self.kernel_size, padding=self.padding, dtype=self.dtype,
                  name="conv1")(x)
    y = nn.relu(self._norm("norm1")(y))
    y = ConvLayer(self.features, self.kernel_size, padding=self.padding, dtype=self.dtype,
                  name="conv2")(y)
    y = self._norm("norm2")(y)
    if self.padding == "none":
      crop = self.kernel_size - 1
      x = x[:, crop:-crop, crop:-crop, :]
    return (x + y).astype(y.dtype)
