"""Instance normalisation (Ulyanov et al. 2016, arXiv 1607.08022).

Every feed-forward stylisation network here normalises each image's feature map on its own: statistics
over H and W, per sample and per channel. Statistics are always computed in float32 so that bfloat16
compute (mixed precision) does not lose the small variances of flat image regions.
"""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def instance_stats(x: Array, eps: float = 1e-5, *, ddof: int = 0) -> Tuple[Array, Array]:
  """Per-sample, per-channel mean and standard deviation over the spatial axes.

  Args:
    x: `[B, H, W, C]` features (any float dtype).
    eps: added to the variance before the square root (keeps the std and its gradient finite).
    ddof: 0 for the biased variance (`torch.nn.InstanceNorm2d`), 1 for the unbiased one that AdaIN's
      reference `calc_mean_std` uses (`torch.Tensor.var` default).

  Returns:
    `(mean, std)`, each `[B, 1, 1, C]` float32, ready to broadcast against `x`.
  """
  x = jnp.asarray(x, jnp.float32)
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  n = x.shape[1] * x.shape[2]
  # Two-pass variance: the one-pass E[x^2]-E[x]^2 cancels badly on large-magnitude VGG activations.
  var = jnp.sum(jnp.square(x - mean), axis=(1, 2), keepdims=True) / max(n - ddof, 1)
  return mean, jnp.sqrt(var + eps)


class InstanceNorm(nn.Module):
  """Instance normalisation with an optional learned affine map.

  Same as `torch.nn.InstanceNorm2d(C, affine=True)` (biased variance, eps inside the square root, no
  running statistics).

  Attributes:
    use_scale: learn a per-channel scale `gamma` (param `scale`, initialised to 1).
    use_bias: learn a per-channel shift `beta` (param `bias`, initialised to 0).
    epsilon: variance epsilon.
    dtype: dtype of the output; None keeps the input's dtype. Statistics are float32 regardless.
  """
  use_scale: bool = True
  use_bias: bool = True
  epsilon: float = 1e-5
  dtype: Optional[Any] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Normalises `x` `[B, H, W, C]` -> `[B, H, W, C]`."""
    out_dtype = self.dtype or x.dtype
    features = x.shape[-1]
    mean, std = instance_stats(x, self.epsilon)
    y = (jnp.asarray(x, jnp.float32) - mean) / std
    if self.use_scale:
      y = y * self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    return y.astype(out_dtype)
