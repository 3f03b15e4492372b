"""Instance normalisation (Ulyanov et al. 2016, arXiv 1607.08022).

Every feed-forward stylisation network here normalises each image's feature map on its own: statistics
over H and W, per sample and per channel. Statistics are always computed in float32 so that bfloat16
compute (mixed precision) does not lose the small variances of flat image regions.

Fixed statistics (the `norm_stats` collection) let a large image be stylized tile by tile
(`jaxstyle.tiling`): applied with `mutable=[STATS]`, every `InstanceNorm` and
`ConditionalInstanceNorm` records the statistics it used; applied with those variables, it uses
them instead of its input's, so every tile is normalised like the whole image.
"""
import functools
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


def instance_norm(x: Array, scale: Optional[Array] = None, bias: Optional[Array] = None,
                  eps: float = 1e-5, dtype: Optional[Any] = None) -> Array:
  """`scale * (x - mean) / sqrt(var + eps) + bias` with per-sample, per-channel statistics over H, W.

  Args:
    x: `[B, H, W, C]` features (any float dtype).
    scale: None (1), `[C]` (shared) or `[B, C]` (per sample, conditional instance norm).
    bias: None (0), `[C]` or `[B, C]`.
    eps: variance epsilon (biased variance, inside the square root, as `torch.nn.InstanceNorm2d`).
    dtype: output dtype (None keeps `x`'s); statistics and the affine map are float32.

  Returns:
    `[B, H, W, C]`.

  The gradient is written out (`_normalize`'s VJP): autodiff of the formula above sums over H and W
  once per path through the mean and the variance and again for the affine parameters, and those
  column reductions are the largest cost of MSG-Net's bf16 train step on a GPU after the
  convolutions. The written-out form reads `x` and the incoming gradient once for two sums (which
  also give the affine parameters' gradients) and once for the input gradient.
  """
  c = x.shape[-1]

  def per_sample(p, fill):
    if p is None:
      return jnp.full((1, 1, 1, c), fill, jnp.float32)
    p = jnp.asarray(p, jnp.float32)
    return p.reshape((p.shape[0] if p.ndim == 2 else 1, 1, 1, c))

  return _normalize(x, per_sample(scale, 1.0), per_sample(bias, 0.0), float(eps),
                    jnp.dtype(dtype or x.dtype))


STATS = "norm_stats"


def fixed_stats(module: nn.Module, x: Array, eps: float) -> Optional[Tuple[Array, Array]]:
  """In `module`'s scope: records `instance_stats(x)` when the STATS collection is mutable and
  returns None (normalise as usual); returns statistics recorded earlier when given; else None."""
  if module.is_mutable_collection(STATS) and not module.is_initializing():
    mean, std = instance_stats(x, eps)
    module.put_variable(STATS, "mean", mean)
    module.put_variable(STATS, "std", std)
    return None
  if module.has_variable(STATS, "mean"):
    return module.get_variable(STATS, "mean"), module.get_variable(STATS, "std")
  return None


def normalize_with(x: Array, stats: Tuple[Array, Array], scale: Optional[Array] = None,
                   bias: Optional[Array] = None, dtype: Optional[Any] = None) -> Array:
  """`instance_norm` with given `(mean, std)` (`[1 or B, 1, 1, C]`) instead of `x`'s own."""
  mean, std = stats
  c = x.shape[-1]
  y = (jnp.asarray(x, jnp.float32) - mean) / std
  if scale is not None:
    scale = jnp.asarray(scale, jnp.float32)
    y = y * scale.reshape((scale.shape[0] if scale.ndim == 2 else 1, 1, 1, c))
  if bias is not None:
    bias = jnp.asarray(bias, jnp.float32)
    y = y + bias.reshape((bias.shape[0] if bias.ndim == 2 else 1, 1, 1, c))
  return y.astype(dtype or x.dtype)


def _sum_hw(x: Array) -> Array:
  return jnp.sum(x, axis=(1, 2), keepdims=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _normalize(x, scale, bias, eps, dtype):
  """`instance_norm` with `scale` and `bias` `[1 or B, 1, 1, C]` float32."""
  return _normalize_fwd(x, scale, bias, eps, dtype)[0]


def _normalize_fwd(x, scale, bias, eps, dtype):
  mean, std = instance_stats(x, eps)
  rstd = 1.0 / std
  y = (jnp.asarray(x, jnp.float32) - mean) * (rstd * scale) + bias
  return y.astype(dtype), (x, mean, rstd, scale)


def _normalize_bwd(eps, dtype, residuals, dy):
  del eps, dtype
  x, mean, rstd, scale = residuals
  n = x.shape[1] * x.shape[2]
  dy = jnp.asarray(dy, jnp.float32)
  x_hat = (jnp.asarray(x, jnp.float32) - mean) * rstd
  sum_dy, sum_dy_xhat = _sum_hw(dy), _sum_hw(dy * x_hat)
  dx = (rstd * scale) * (dy - (sum_dy + x_hat * sum_dy_xhat) / n)

  def like(g, p):  # a shared [1, 1, 1, C] parameter gets the batch's sum
    return jnp.sum(g, axis=0, keepdims=True) if p.shape[0] == 1 else g

  return dx.astype(x.dtype), like(sum_dy_xhat, scale), like(sum_dy, scale)


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


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
    features = x.shape[-1]
    scale = (self.param("scale", nn.initializers.ones, (features,), jnp.float32)
             if self.use_scale else None)
    bias = (self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
            if self.use_bias else None)
    stats = fixed_stats(self, x, self.epsilon)
    if stats is not None:
      return normalize_with(x, stats, scale, bias, self.dtype)
    return instance_norm(x, scale, bias, self.epsilon, self.dtype)
