"""CoMatch (Inspiration) layer vs NumPy and PyTorch (channels-first, as the reference) formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxstyle.nn.comatch import CoMatch, comatch


def _gram_np(f):
  """Gram of NHWC features divided by C*H*W (reference `GramMatrix`)."""
  b, h, w, c = f.shape
  x = f.reshape(b, h * w, c)
  return np.einsum("bnc,bnd->bcd", x, x) / (c * h * w)


def _inspiration_torch(x_nchw, weight, gram):
  """The reference's forward in channels-first layout: P = W G, out = P^T X (X as [B, C, HW])."""
  b, c = x_nchw.shape[:2]
  p = torch.bmm(weight.unsqueeze(0).expand_as(gram), gram)
  out = torch.bmm(p.transpose(1, 2).expand(b, c, c), x_nchw.reshape(b, c, -1))
  return out.view_as(x_nchw)


def test_init_uniform_0_002():
  layer = CoMatch(features=64)
  x = jnp.zeros((1, 4, 4, 64))
  g = jnp.zeros((1, 64, 64))
  w = np.asarray(layer.init(jax.random.PRNGKey(0), x, g)["params"]["weight"])
  assert w.shape == (64, 64)
  assert w.min() >= 0.0 and w.max() <= 0.02
  # 4096 draws from U(0, 0.02): mean 0.01, std 0.02/sqrt(12).
  assert abs(w.mean() - 0.01) < 5e-4
  assert abs(w.std() - 0.02 / np.sqrt(12)) < 5e-4


@pytest.mark.parametrize("gram_batch", [1, 3])
def test_matches_numpy_and_torch(rng, gram_batch):
  b, h, w, c = 3, 5, 7, 8
  x = rng.normal(size=(b, h, w, c)).astype(np.float32)
  style = rng.normal(size=(gram_batch, 6, 4, c)).astype(np.float32)
  gram = _gram_np(style).astype(np.float32)
  layer = CoMatch(features=c)
  params = layer.init(jax.random.PRNGKey(1), x, gram)
  # A non-symmetric, signed W makes a transpose mistake visible.
  weight = rng.normal(size=(c, c)).astype(np.float32)
  params = {"params": {"weight": jnp.asarray(weight)}}
  out = np.asarray(layer.apply(params, x, gram))

  # NumPy: per sample and pixel, y[n] = sum_d x[n, d] (W G)[d, c].
  p = np.einsum("ij,bjk->bik", weight, gram)
  p = np.broadcast_to(p, (b, c, c))
  ref_np = np.stack([x[i].reshape(-1, c) @ p[i] for i in range(b)]).reshape(b, h, w, c)
  np.testing.assert_allclose(out, ref_np, rtol=1e-5, atol=1e-5)

  # PyTorch, channels first, exactly the reference's bmm/transposes.
  ref_t = _inspiration_torch(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(weight),
                             torch.from_numpy(gram)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(out, ref_t, rtol=1e-5, atol=1e-5)


def test_identity_like_weight_passes_features_through(rng):
  # W = G^-1 makes W G the identity, so the layer returns X unchanged.
  c = 6
  x = rng.normal(size=(2, 3, 3, c)).astype(np.float32)
  a = rng.normal(size=(c, c)).astype(np.float32)
  gram = (a @ a.T + c * np.eye(c, dtype=np.float32))[None]
  weight = np.linalg.inv(gram[0])
  out = comatch(jnp.asarray(x), jnp.asarray(weight), jnp.asarray(gram))
  np.testing.assert_allclose(np.asarray(out), x, rtol=1e-4, atol=1e-4)


def test_gradients_reach_weight_and_bf16_compute(rng):
  c = 4
  x = rng.normal(size=(2, 3, 3, c)).astype(np.float32)
  gram = _gram_np(rng.normal(size=(1, 3, 3, c))).astype(np.float32)
  layer = CoMatch(features=c, dtype=jnp.bfloat16)
  params = layer.init(jax.random.PRNGKey(0), x, gram)
  assert params["params"]["weight"].dtype == jnp.float32
  out = layer.apply(params, x, gram)
  assert out.dtype == jnp.bfloat16
  ref = CoMatch(features=c).apply(params, x, gram)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), rtol=0.05, atol=0.02)
  grad = jax.grad(lambda p: jnp.sum(CoMatch(features=c).apply(p, x, gram) ** 2))(params)
  assert np.all(np.isfinite(np.asarray(grad["params"]["weight"])))
  assert np.abs(np.asarray(grad["params"]["weight"])).sum() > 0


def test_rejects_mismatched_shapes():
  layer = CoMatch(features=8)
  with pytest.raises(ValueError, match="CoMatch"):
    layer.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 8)), jnp.zeros((1, 4, 4)))
