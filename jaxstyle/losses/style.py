"""Style statistics and their losses: Gram matrices (Gatys et al. 2016) and channel mean/std
(Huang & Belongie 2017, AdaIN's style loss), each with optional spatial masks (Gatys et al. 2017,
"Controlling Perceptual Factors in Neural Style Transfer": statistics of a region only).
"""
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

Array = jax.Array

_NORMALIZE = ("chw", "hw", "none", None)


def _mask4(mask: Array, f: Array) -> Array:
  m = jnp.asarray(mask, jnp.float32)
  if m.ndim == 2:
    m = m[None]
  if m.ndim != 3 or m.shape[1:] != f.shape[1:3]:
    raise ValueError(f"mask {m.shape} does not match features {f.shape} (want [B, H, W])")
  return jnp.broadcast_to(m, f.shape[:3])[..., None]


def _gram_operands(f: Array) -> Tuple[Array, dict]:
  """`f` and the dot options of its products: float32 at full precision (XLA's default would let a
  GPU round to TF32); 16-bit features (mixed precision) stay 16-bit, on the tensor cores, with
  float32 accumulation, which loses nothing: their products are exact in float32."""
  if f.dtype in (jnp.bfloat16, jnp.float16):
    return f, dict(preferred_element_type=jnp.float32)
  return f.astype(jnp.float32), dict(precision=jax.lax.Precision.HIGHEST,
                                     preferred_element_type=jnp.float32)


@jax.custom_vjp
def _self_gram(f: Array) -> Array:
  """`F^T F` per sample of `f` [B, N, C], float32 [B, C, C]."""
  f, options = _gram_operands(f)
  return jnp.einsum("bnc,bnd->bcd", f, f, **options)


def _self_gram_fwd(f):
  return _self_gram(f), f


def _self_gram_bwd(f, dg):
  # d(F^T F) = F (dG + dG^T): one product instead of the two that autodiff of the einsum makes,
  # and, for 16-bit features, in their dtype rather than float32 (the cotangent of a 16-bit input
  # is rounded to 16 bits anyway).
  f_op, options = _gram_operands(f)
  sym = (dg + jnp.swapaxes(dg, 1, 2)).astype(f_op.dtype)
  return (jnp.einsum("bnc,bcd->bnd", f_op, sym, **options).astype(f.dtype),)


_self_gram.defvjp(_self_gram_fwd, _self_gram_bwd)


def gram_matrix(f: Array, normalize: Optional[str] = "chw", mask: Optional[Array] = None) -> Array:
  """Channel co-activation (Gram) matrix of each feature map.

  Args:
    f: `[B, H, W, C]` features.
    normalize: 'chw' divides by C*H*W (neural-style, fast-neural-style, MSG-Net), 'hw' by H*W
      (Magenta), 'none'/None leaves the raw sum (Risser et al.'s co-author code).
    mask: optional `[B, H, W]` (or `[H, W]`) weights: each position's outer product is weighted by the
      mask and H*W is replaced by the mask's sum (so 'hw' gives the masked mean outer product).

  Returns:
    `[B, C, C]` float32.
  """
  if normalize not in _NORMALIZE:
    raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
  f = jnp.asarray(f)
  b, h, w, c = f.shape
  if mask is None:
    g, count = _self_gram(f.reshape(b, h * w, c)), jnp.float32(h * w)
  else:
    f = f.astype(jnp.float32)
    m = _mask4(mask, f)
    count = jnp.sum(m, axis=(1, 2, 3))[:, None, None]
    g = jnp.einsum("bhwc,bhwd->bcd", f * m, f, precision=jax.lax.Precision.HIGHEST)
  if normalize in ("none", None):
    return g
  count = jnp.maximum(count, 1e-8)
  return g / (count * c) if normalize == "chw" else g / count


def gram_loss(f: Array, target_gram: Array, normalize: Optional[str] = "chw",
              mask: Optional[Array] = None) -> Array:
  """Mean squared error between the Gram matrices of `f` and a target.

  Args:
    f: `[B, H, W, C]` features.
    target_gram: `[B, C, C]`, `[1, C, C]` or `[C, C]` (e.g. from `gram_matrix` of the style features,
      computed with the same `normalize`).
    normalize: see `gram_matrix`.
    mask: optional `[B, H, W]` mask for `f` (the target's own mask is applied when building it).

  Returns:
    Scalar float32 loss.
  """
  g = gram_matrix(f, normalize, mask)
  return jnp.mean(jnp.square(g - jnp.asarray(target_gram, jnp.float32)))


def mean_std(f: Array, mask: Optional[Array] = None, eps: float = 1e-5) -> Tuple[Array, Array]:
  """Per-channel mean and standard deviation over the spatial axes (optionally masked).

  Args:
    f: `[B, H, W, C]` features.
    mask: optional `[B, H, W]` weights; statistics become weighted means over the mask.
    eps: added to the (biased) variance before the square root.

  Returns:
    `(mean, std)`, each `[B, C]` float32.
  """
  f = jnp.asarray(f, jnp.float32)
  if mask is None:
    mean = jnp.mean(f, axis=(1, 2))
    var = jnp.mean(jnp.square(f - mean[:, None, None]), axis=(1, 2))
  else:
    m = _mask4(mask, f)
    count = jnp.maximum(jnp.sum(m, axis=(1, 2)), 1e-8)
    mean = jnp.sum(f * m, axis=(1, 2)) / count
    var = jnp.sum(jnp.square(f - mean[:, None, None]) * m, axis=(1, 2)) / count
  return mean, jnp.sqrt(var + eps)


def mean_std_loss(f: Array, target: Union[Array, Sequence[Array]], mask: Optional[Array] = None,
                  target_mask: Optional[Array] = None, eps: float = 1e-5) -> Array:
  """AdaIN's style loss: `mse(mean(f), mean(t)) + mse(std(f), std(t))`.

  Args:
    f: `[B, H, W, C]` features.
    target: target features `[B|1, H', W', C]` or a precomputed `(mean, std)` pair of `[B|1, C]`.
    mask: optional `[B, H, W]` mask for `f`.
    target_mask: optional mask for the target features (ignored for a precomputed pair).
    eps: variance epsilon.

  Returns:
    Scalar float32 loss.
  """
  mu, sigma = mean_std(f, mask, eps)
  if isinstance(target, (tuple, list)):
    t_mu, t_sigma = target
  else:
    t_mu, t_sigma = mean_std(target, target_mask, eps)
  return jnp.mean(jnp.square(mu - t_mu)) + jnp.mean(jnp.square(sigma - t_sigma))


def resize_mask(mask: Array, hw: Tuple[int, int]) -> Array:
  """Resizes `[B, H, W]` (or `[H, W]`) masks to a feature map's `(h, w)` by area averaging.

  Area averaging (box filter for integer factors) keeps the soft coverage of each feature cell, which is
  what the masked statistics above weight by.
  """
  m = jnp.asarray(mask, jnp.float32)
  squeeze = m.ndim == 2
  if squeeze:
    m = m[None]
  b, h, w = m.shape
  if (h, w) == tuple(hw):
    out = m
  elif h % hw[0] == 0 and w % hw[1] == 0:
    out = m.reshape(b, hw[0], h // hw[0], hw[1], w // hw[1]).mean(axis=(2, 4))
  else:
    out = jax.image.resize(m, (b,) + tuple(hw), "linear", antialias=True)
  return out[0] if squeeze else out
