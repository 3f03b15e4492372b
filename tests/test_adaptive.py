"""AdaIN and conditional instance norm against NumPy and PyTorch references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle.nn import adaptive


def _np_mean_std(x, eps, mask=None):
  """NumPy reference: per-sample/channel statistics over (optionally weighted) space."""
  if mask is None:
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
  else:
    w = np.broadcast_to(mask, x.shape[:3])[..., None].astype(np.float64)
    mean = (w * x).sum(axis=(1, 2), keepdims=True) / w.sum(axis=(1, 2), keepdims=True)
    var = (w * (x - mean) ** 2).sum(axis=(1, 2), keepdims=True) / w.sum(axis=(1, 2), keepdims=True)
  return mean, np.sqrt(var + eps)


def _np_adain(c, s, eps=1e-5, cmask=None, smask=None):
  cm, cs = _np_mean_std(c.astype(np.float64), eps, cmask)
  sm, ss = _np_mean_std(s.astype(np.float64), eps, smask)
  return (c - cm) / cs * ss + sm


def test_adain_matches_numpy(rng):
  c = rng.normal(2.0, 3.0, (2, 6, 7, 5)).astype(np.float32)
  s = rng.normal(-1.0, 0.5, (2, 9, 4, 5)).astype(np.float32)
  out = adaptive.adain(jnp.asarray(c), jnp.asarray(s))
  np.testing.assert_allclose(np.asarray(out), _np_adain(c, s), rtol=1e-4, atol=1e-4)
  # The output carries the style's statistics.
  m, sd = _np_mean_std(np.asarray(out, np.float64), 0.0)
  sm, ssd = _np_mean_std(s.astype(np.float64), 1e-5)
  np.testing.assert_allclose(m, sm, atol=1e-4)
  np.testing.assert_allclose(sd, ssd, rtol=1e-3)


def test_adain_shared_style_broadcasts(rng):
  c = rng.normal(size=(3, 5, 5, 4)).astype(np.float32)
  s = rng.normal(size=(1, 6, 6, 4)).astype(np.float32)
  out = adaptive.adain(jnp.asarray(c), jnp.asarray(s))
  np.testing.assert_allclose(np.asarray(out), _np_adain(c, np.repeat(s, 3, 0)), rtol=1e-4,
                             atol=1e-4)


def test_adain_masked_matches_numpy(rng):
  c = rng.normal(1.0, 2.0, (2, 8, 8, 3)).astype(np.float32)
  s = rng.normal(0.0, 1.0, (2, 6, 6, 3)).astype(np.float32)
  cmask = (rng.uniform(size=(8, 8)) > 0.4).astype(np.float32)
  smask = rng.uniform(size=(2, 6, 6)).astype(np.float32)  # soft weights too
  out = adaptive.adain(jnp.asarray(c), jnp.asarray(s), content_mask=cmask, style_mask=smask)
  np.testing.assert_allclose(np.asarray(out), _np_adain(c, s, 1e-5, cmask, smask),
                             rtol=1e-4, atol=1e-4)


def test_adain_against_torch_reference(rng):
  """pytorch-AdaIN's formula with the biased variance (the paper's; its code divides by HW - 1)."""
  torch = pytest.importorskip("torch")
  c = rng.normal(size=(2, 7, 6, 4)).astype(np.float32)
  s = rng.normal(3.0, 2.0, size=(2, 5, 5, 4)).astype(np.float32)
  tc, ts = torch.from_numpy(c).permute(0, 3, 1, 2), torch.from_numpy(s).permute(0, 3, 1, 2)
  normalised = torch.nn.functional.instance_norm(tc, eps=1e-5)
  s_mean = ts.mean(dim=(2, 3), keepdim=True)
  s_std = (ts.var(dim=(2, 3), keepdim=True, unbiased=False) + 1e-5).sqrt()
  ref = (normalised * s_std + s_mean).permute(0, 2, 3, 1).numpy()
  out = adaptive.adain(jnp.asarray(c), jnp.asarray(s))
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_conditional_instance_norm_given_params_vs_torch(rng):
  torch = pytest.importorskip("torch")
  x = rng.normal(1.0, 2.0, (3, 6, 5, 4)).astype(np.float32)
  gamma = rng.normal(size=(3, 4)).astype(np.float32)
  beta = rng.normal(size=(3, 4)).astype(np.float32)
  layer = adaptive.ConditionalInstanceNorm()
  variables = layer.init(jax.random.key(0), x, gamma=gamma, beta=beta)
  assert not variables  # nothing learned when the parameters come from outside
  out = layer.apply(variables, x, gamma=gamma, beta=beta)
  tx = torch.from_numpy(x).permute(0, 3, 1, 2)
  ref = torch.nn.functional.instance_norm(tx, eps=1e-5).permute(0, 2, 3, 1).numpy()
  ref = ref * gamma[:, None, None, :] + beta[:, None, None, :]
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_conditional_instance_norm_table(rng):
  x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
  layer = adaptive.ConditionalInstanceNorm(num_styles=4)
  variables = layer.init(jax.random.key(0), x, style=jnp.array([0, 1]))
  scale = rng.normal(size=(4, 3)).astype(np.float32)
  bias = rng.normal(size=(4, 3)).astype(np.float32)
  params = {"params": {"scale": scale, "bias": bias}}
  assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, params)
  m, sd = _np_mean_std(x.astype(np.float64), 1e-5)
  xhat = (x - m) / sd

  out = layer.apply(params, x, style=jnp.array([3, 1]))
  ref = xhat * scale[[3, 1]][:, None, None, :] + bias[[3, 1]][:, None, None, :]
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)

  # Convex weights interpolate the table rows (Dumoulin et al.'s style mixing).
  w = np.array([[0.25, 0.75, 0, 0], [0, 0, 0.5, 0.5]], np.float32)
  out = layer.apply(params, x, style=jnp.asarray(w))
  ref = xhat * (w @ scale)[:, None, None, :] + (w @ bias)[:, None, None, :]
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_conditional_instance_norm_bf16_and_errors(rng):
  x = rng.normal(size=(1, 4, 4, 2)).astype(np.float32)
  layer = adaptive.ConditionalInstanceNorm(dtype=jnp.bfloat16)
  out = layer.apply({}, x, gamma=np.ones((1, 2)), beta=np.zeros((1, 2)))
  assert out.dtype == jnp.bfloat16
  with pytest.raises(ValueError):
    layer.apply({}, x)
  with pytest.raises(ValueError):
    adaptive.ConditionalInstanceNorm(num_styles=2).init(jax.random.key(0), x)
  with pytest.raises(ValueError):
    adaptive.adain(jnp.asarray(x), jnp.asarray(x), content_mask=np.ones((3, 3)))
