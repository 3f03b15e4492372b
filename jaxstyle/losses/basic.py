"""Content (feature reconstruction) and total-variation losses.

Content loss: Gatys et al. 2016 / Johnson et al. 2016 feature reconstruction, the mean squared error
between two feature maps. Total variation: the smoothness prior of Mahendran & Vedaldi 2015 that
neural-style and fast-neural-style add to suppress high-frequency noise.
"""
from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def content_loss(a: Array, b: Array, mask: Optional[Array] = None) -> Array:
  """Mean squared error between feature maps.

  Args:
    a: `[B, H, W, C]` features (gradients flow through `a` and `b`; stop them on the target yourself).
    b: features broadcastable to `a` (e.g. `[1, H, W, C]`).
    mask: optional `[B, H, W]` (or `[H, W]`) weights; the mean is then taken over masked positions
      (sum of weights times C), so the loss scale does not depend on the region's area.

  Returns:
    Scalar float32 loss.
  """
  sq = jnp.square(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))
  if mask is None:
    return jnp.mean(sq)
  m = jnp.broadcast_to(_spatial_mask(mask, sq), sq.shape[:3] + (1,))
  return jnp.sum(sq * m) / jnp.maximum(jnp.sum(m) * sq.shape[-1], 1e-8)


def total_variation(x: Array, kind: str = "l2", reduction: str = "mean") -> Array:
  """Anisotropic total variation of images or feature maps.

  Args:
    x: `[B, H, W, C]` (or `[H, W, C]`).
    kind: 'l2' sums squared neighbour differences (neural-style's `TVLoss` gradient, Magenta), 'l1'
      absolute differences (the classic TV norm).
    reduction: 'mean' averages each direction's differences over its elements and adds the two
      (independent of image size); 'sum' sums all differences per image and averages over the batch.

  Returns:
    Scalar float32 loss.
  """
  x = jnp.asarray(x, jnp.float32)
  if x.ndim == 3:
    x = x[None]
  dy = x[:, 1:, :, :] - x[:, :-1, :, :]
  dx = x[:, :, 1:, :] - x[:, :, :-1, :]
  if kind == "l2":
    dy, dx = jnp.square(dy), jnp.square(dx)
  elif kind == "l1":
    dy, dx = jnp.abs(dy), jnp.abs(dx)
  else:
    raise ValueError(f"kind must be 'l2' or 'l1', got {kind!r}")
  if reduction == "mean":
    return jnp.mean(dy) + jnp.mean(dx)
  if reduction == "sum":
    return (jnp.sum(dy) + jnp.sum(dx)) / x.shape[0]
  raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _spatial_mask(mask: Array, like: Array) -> Array:
  """`[B|1, H, W]` or `[H, W]` mask -> float32 `[B|1, H, W, 1]` that broadcasts against `like`."""
  m = jnp.asarray(mask, jnp.float32)
  if m.ndim == 2:
    m = m[None]
  if m.shape[1:] != like.shape[1:3]:
    raise ValueError(f"mask {m.shape[1:]} does not match the feature map's spatial size {like.shape[1:3]}")
  return m[..., None]
