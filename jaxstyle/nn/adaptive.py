"""Adaptive normalisation: AdaIN and conditional instance norm.

* `adain` is Adaptive Instance Normalization (Huang & Belongie, "Arbitrary Style Transfer in
  Real-time with Adaptive Instance Normalization", ICCV 2017, eq. 8): content features
  re-normalised to the style features' per-channel mean and standard deviation.
* `ConditionalInstanceNorm` is instance normalisation whose affine parameters come from outside:
  either a learned table indexed by style (Dumoulin et al., "A Learned Representation for Artistic
  Style", ICLR 2017) or given per sample, e.g. predicted from a style image (Ghiasi et al.,
  "Exploring the structure of a real-time, arbitrary neural artistic stylization network",
  BMVC 2017).

Statistics use the biased variance (divide by H*W), as the paper's Eqs. 5-6 and instance norm do;
`eps` is added to the variance before the square root, as in the reference AdaIN code
(`calc_mean_std`, eps 1e-5), which divides by H*W - 1 (a relative difference of 1/(2HW) in the
standard deviation: 0.8% at relu4_1's 8x8 on a 64 px image, 0.05% at 256 px).
"""
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstyle.nn import norms

Array = jax.Array


def _as_weights(mask: Optional[Array], x: Array) -> Optional[Array]:
  """Broadcasts a mask `[H,W]`, `[B,H,W]` or `[B,H,W,1]` to `[B,H,W,1]` float weights."""
  if mask is None:
    return None
  mask = jnp.asarray(mask, jnp.float32)
  if mask.ndim == 2:
    mask = mask[None]
  if mask.ndim == 3:
    mask = mask[..., None]
  if mask.shape[1:3] != x.shape[1:3]:
    raise ValueError(f"mask spatial shape {mask.shape[1:3]} does not match features {x.shape[1:3]}")
  return jnp.broadcast_to(mask, x.shape[:3] + (1,))


def channel_mean_std(x: Array, eps: float = 1e-5,
                     mask: Optional[Array] = None) -> Tuple[Array, Array]:
  """Per-sample, per-channel mean and standard deviation over space.

  Args:
    x: features `[B, H, W, C]`.
    eps: added to the variance before the square root.
    mask: optional weights `[H, W]` or `[B, H, W]` in [0, 1]; statistics are then weighted averages
      over the masked region (spatial control).

  Returns:
    `(mean, std)`, each `[B, 1, 1, C]`, computed in float32.
  """
  x = x.astype(jnp.float32)
  w = _as_weights(mask, x)
  if w is None:
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  else:
    # A region can be empty after downsampling; the floor keeps the division finite.
    total = jnp.maximum(jnp.sum(w, axis=(1, 2), keepdims=True), 1e-6)
    mean = jnp.sum(w * x, axis=(1, 2), keepdims=True) / total
    var = jnp.sum(w * jnp.square(x - mean), axis=(1, 2), keepdims=True) / total
  return mean, jnp.sqrt(var + eps)


def adain_from_stats(content: Array, mean: Array, std: Array, eps: float = 1e-5,
                     content_mask: Optional[Array] = None) -> Array:
  """AdaIN with the style statistics already computed.

  Args:
    content: content features `[B, H, W, C]`.
    mean: target mean, broadcastable to `[B, 1, 1, C]`.
    std: target standard deviation, broadcastable to `[B, 1, 1, C]`.
    eps: variance epsilon of the content statistics.
    content_mask: optional `[H, W]` / `[B, H, W]` region whose statistics normalise the content.

  Returns:
    `[B, H, W, C]` features with (over the region) the target mean and std, in `content.dtype`.
  """
  c_mean, c_std = channel_mean_std(content, eps, content_mask)
  out = (content.astype(jnp.float32) - c_mean) / c_std * std + mean
  return out.astype(content.dtype)


def adain(content: Array, style: Array, eps: float = 1e-5, content_mask: Optional[Array] = None,
          style_mask: Optional[Array] = None) -> Array:
  """Adaptive Instance Normalization: `std(s) * (c - mean(c)) / std(c) + mean(s)` per channel.

  With masks (spatial control, as in the reference `test.lua -mask`), the statistics of each side
  are taken over its masked region only. The result is still defined everywhere; the caller keeps
  the part inside `content_mask` and blends the regions of several styles.

  Args:
    content: content features `[B, H, W, C]`.
    style: style features `[B, h, w, C]` (any spatial size) or `[1, h, w, C]` for one style
      shared by the batch.
    eps: added to both variances.
    content_mask: optional region of the content, `[H, W]` or `[B, H, W]`.
    style_mask: optional region of the style image, `[h, w]` or `[B, h, w]`.

  Returns:
    `[B, H, W, C]` re-normalised content features.
  """
  s_mean, s_std = channel_mean_std(style, eps, style_mask)
  return adain_from_stats(content, s_mean, s_std, eps, content_mask)


class ConditionalInstanceNorm(nn.Module):
  """Instance normalisation with externally chosen affine parameters.

  Two ways to get `gamma` / `beta` (`[B, C]`):
  * `num_styles` set: a learned table `scale[num_styles, C]`, `bias[num_styles, C]` (Dumoulin et
    al.). `style` is an int index `[B]` or convex weights `[B, num_styles]`, which interpolate the
    rows (their style mixing).
  * `num_styles` None: `gamma` and `beta` are passed in per sample (Ghiasi et al.: predicted by
    the style network).

  Attributes:
    num_styles: size of the learned table, or None for given parameters.
    epsilon: variance epsilon.
    dtype: compute dtype of the output (statistics are always float32).
  """
  num_styles: Optional[int] = None
  epsilon: float = 1e-5
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x: Array, style: Optional[Array] = None, gamma: Optional[Array] = None,
               beta: Optional[Array] = None) -> Array:
    """Normalises `x` per sample and channel, then applies `gamma * x_hat + beta`.

    Args:
      x: `[B, H, W, C]`.
      style: table mode only: int `[B]` indices or float `[B, num_styles]` weights.
      gamma: given mode only: `[B, C]` scales.
      beta: given mode only: `[B, C]` offsets.

    Returns:
      `[B, H, W, C]` in `self.dtype` (or `x.dtype`).
    """
    channels = x.shape[-1]
    if self.num_styles is not None:
      if style is None:
        raise ValueError("ConditionalInstanceNorm with a style table needs `style`")
      scale = self.param("scale", nn.initializers.ones, (self.num_styles, channels), jnp.float32)
      bias = self.param("bias", nn.initializers.zeros, (self.num_styles, channels), jnp.float32)
      style = jnp.asarray(style)
      if jnp.issubdtype(style.dtype, jnp.integer):
        gamma, beta = scale[style], bias[style]
      else:
        gamma, beta = style @ scale, style @ bias
    elif gamma is None or beta is None:
      raise ValueError("ConditionalInstanceNorm without a style table needs `gamma` and `beta`")
    gamma = jnp.asarray(gamma, jnp.float32).reshape(-1, channels)
    beta = jnp.asarray(beta, jnp.float32).reshape(-1, channels)
    stats = norms.fixed_stats(self, x, self.epsilon)
    if stats is not None:
      return norms.normalize_with(x, stats, gamma, beta, self.dtype)
    return norms.instance_norm(x, gamma, beta, self.epsilon, self.dtype)
