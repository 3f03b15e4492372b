"""Every per-channel statistic keeps its variance epsilon: flat channels stay finite.

The layer tests use channels of variance 0.25-9, where eps = 1e-5 moves nothing by more than 1e-5
relative; flat image regions (a blank sky, a padded border) give variances of 0 or ~1e-5, where
eps decides whether the output is finite and by how much a channel is amplified.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import losses
from jaxstyle import nn as jnn
from jaxstyle.nn import adaptive

EPS = 1e-5


def _flat_features():
  """`[1, 6, 5, 3]`: channel 0 constant, channel 1 of variance 1e-5, channel 2 of variance ~1."""
  rng = np.random.default_rng(0)
  x = np.zeros((1, 6, 5, 3), np.float32)
  x[..., 0] = 2.5
  x[..., 1] = np.where(np.indices((6, 5)).sum(0) % 2 == 0, 1.0, -1.0) * np.sqrt(1e-5) + 0.3
  x[..., 2] = rng.normal(size=(6, 5))
  return x


def _np_std(x):
  return np.sqrt(x.astype(np.float64).var(axis=(1, 2)) + EPS)


def test_statistics_add_eps_inside_the_square_root():
  x = _flat_features()
  want = _np_std(x)  # channel 1: sqrt(2e-5), 41% above the eps-free 1e-5 ** 0.5
  for name, std in (("instance_stats", jnn.instance_stats(x, EPS)[1]),
                    ("channel_mean_std", adaptive.channel_mean_std(jnp.asarray(x), EPS)[1]),
                    ("mean_std", losses.mean_std(jnp.asarray(x), eps=EPS)[1])):
    np.testing.assert_allclose(np.asarray(std).reshape(want.shape), want, rtol=1e-4, err_msg=name)
  unbiased = jnn.instance_stats(x, EPS, ddof=1)[1]
  np.testing.assert_allclose(np.asarray(unbiased).reshape(-1), np.sqrt(
      x.astype(np.float64).var(axis=(1, 2), ddof=1) + EPS).reshape(-1), rtol=1e-4)


def test_instance_norm_of_flat_channels_is_finite_with_finite_gradients():
  x = jnp.asarray(_flat_features())
  scale, bias = jnp.asarray([1.5, 2.0, 0.5]), jnp.asarray([0.25, -0.5, 1.0])
  y = jnn.instance_norm(x, scale, bias, EPS)
  # A constant channel gives its bias: the float32 mean's last-bit error (~2e-7) divided by
  # sqrt(eps) stays ~1e-4; without eps it is divided by 0.
  np.testing.assert_allclose(np.asarray(y[..., 0]), 0.25, atol=1e-3)
  xn = np.asarray(x, np.float64)
  want = (xn - xn.mean(axis=(1, 2), keepdims=True)) / _np_std(xn)[:, None, None] * np.asarray(
      scale) + np.asarray(bias)
  np.testing.assert_allclose(np.asarray(y)[..., 1:], want[..., 1:], rtol=1e-4, atol=1e-5)
  grads = jax.grad(lambda x, s, b: jnp.sum(jnp.sin(jnn.instance_norm(x, s, b, EPS))),
                   argnums=(0, 1, 2))(x, scale, bias)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_adain_puts_the_style_mean_on_a_flat_content_channel():
  content = jnp.asarray(_flat_features())
  style = jnp.asarray(np.random.default_rng(1).normal(3.0, 2.0, (1, 4, 4, 3)).astype(np.float32))
  out = np.asarray(adaptive.adain(content, style))
  np.testing.assert_allclose(out[..., 0], float(np.asarray(style)[..., 0].mean()), atol=1e-3)
  # The 1e-5-variance channel is scaled by std_s / sqrt(2e-5), not std_s / sqrt(1e-5).
  s1 = np.asarray(style, np.float64)[..., 1]
  c1 = np.asarray(content, np.float64)[..., 1]
  want = (c1 - c1.mean()) / np.sqrt(c1.var() + EPS) * np.sqrt(s1.var() + EPS) + s1.mean()
  np.testing.assert_allclose(out[..., 1], want, rtol=1e-3)
