"""CoMatch (Inspiration) layer of MSG-Net.

Zhang & Dana, "Multi-style Generative Network for Real-time Transfer", arXiv 1703.06953, Sec. 3.
The layer matches second-order feature statistics inside the generator: it mixes the content
feature channels with a matrix built from the style's Gram matrix, so one network can take any
style target at run time.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def uniform_range(low: float, high: float):
  """Initialiser drawing U(low, high), as the reference's `weight.data.uniform_(0.0, 0.02)`."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, minval=low, maxval=high)

  return init


def comatch(x: jax.Array, weight: jax.Array, gram: jax.Array) -> jax.Array:
  """The Inspiration layer's formula, (W G)^T X per sample, written for NHWC features.

  With X viewed as [C, H*W] (channels first, as in the paper) the output is (W G)^T X. For NHWC
  features viewed as [H*W, C] the same product is X (W G); no transpose is needed.

  Args:
    x: content features [B, H, W, C].
    weight: the learnable matrix W [C, C].
    gram: target Gram matrices [B, C, C] (one per sample) or [1, C, C] (shared by the batch).

  Returns:
    [B, H, W, C], dtype of `x`.
  """
  b, h, w, c = x.shape
  # W @ G in float32: G holds products of features and is small (divided by C*H*W).
  p = jnp.einsum("ij,bjk->bik", weight.astype(jnp.float32), gram.astype(jnp.float32))
  p = jnp.broadcast_to(p, (b, c, c)).astype(x.dtype)
  y = jnp.einsum("bnd,bdc->bnc", x.reshape(b, h * w, c), p)
  return y.reshape(b, h, w, c)


class CoMatch(nn.Module):
  """Inspiration layer: tunes a feature map towards a target Gram matrix.

  `y = (W G)^T X` (paper notation, X as [C, HW]); W is a learnable C x C matrix initialised
  U(0, 0.02) as in the reference `experiments/net.py` (`Inspiration`); G is the Gram matrix of the
  style's Siamese-encoder features divided by C*H*W, computed outside and passed in so the
  parameters never depend on the style.

  Attributes:
    features: C, the channel count of the features (ngf * 4 in MSG-Net).
    dtype: compute dtype of the matrix product with X; W stays float32.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, gram: jax.Array) -> jax.Array:
    """Args: x [B, H, W, C]; gram [B, C, C] or [1, C, C]. Returns [B, H, W, C]."""
    c = self.features
    if x.shape[-1] != c or gram.shape[-2:] != (c, c):
      raise ValueError(f"CoMatch({c}) got features {x.shape} and Gram {gram.shape}")
    weight = self.param("weight", uniform_range(0.0, 0.02), (c, c), jnp.float32)
    return comatch(x.astype(self.dtype), weight, gram)
