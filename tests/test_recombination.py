"""PeerRegularization (TSPR two-stage recombination) against a NumPy re-statement of the reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle.nn import recombination as rec


def _np_mlp(p, x, stats=None, eps=1e-5):
  """Linear-BN-ReLU twice; batch statistics when `stats` is None, else running statistics."""
  for i in range(2):
    d = p["mlp"][f"dense_{i}"]
    x = x @ np.asarray(d["kernel"]) + np.asarray(d["bias"])
    bn = p["mlp"][f"bn_{i}"]
    if stats is None:
      mean, var = x.mean(0), x.var(0)
    else:
      mean, var = np.asarray(stats["mlp"][f"bn_{i}"]["mean"]), np.asarray(stats["mlp"][f"bn_{i}"]["var"])
    x = (x - mean) / np.sqrt(var + eps) * np.asarray(bn["scale"]) + np.asarray(bn["bias"])
    x = np.maximum(x, 0)
  return x


def _np_stage(p, q, pk, pv, k, stats=None):
  """The reference's masked formulation: full score matrix, -1e9 outside the k nearest, softmax."""
  b, n, _ = q.shape
  m = pk.shape[1]
  hq = _np_mlp(p, q.reshape(b * n, -1), stats)
  hp = _np_mlp(p, pk.reshape(b * m, -1), stats)
  a = (hq @ np.asarray(p["query_score"]["kernel"]) + np.asarray(p["query_score"]["bias"])).reshape(b, n)
  s = (hp @ np.asarray(p["peer_score"]["kernel"]) + np.asarray(p["peer_score"]["bias"])).reshape(b, m)
  out = []
  for i in range(b):
    dist = ((q[i][:, None, :] - pk[i][None, :, :]) ** 2).sum(-1)
    kth = np.sort(dist, axis=1)[:, k - 1:k]
    att = a[i][:, None] + s[i][None, :]
    att = np.log1p(np.exp(att)) + (dist > kth) * -1e9
    att = np.exp(att - att.max(1, keepdims=True))
    att /= att.sum(1, keepdims=True)
    out.append(att @ pv[i])
  return np.stack(out)


@pytest.fixture
def codes():
  g = np.random.default_rng(0)
  b, h, w, cc, cs = 2, 4, 5, 16, 32
  mk = lambda *s: g.normal(size=s).astype(np.float32)
  return mk(b, h, w, cc), mk(b, h, w, cs), mk(b, 3, 6, cc), mk(b, 3, 6, cs)


def _init(layer, codes):
  return layer.init(jax.random.PRNGKey(1), *map(jnp.asarray, codes))


def test_knn_matches_numpy_argsort():
  g = np.random.default_rng(1)
  q, kk = g.normal(size=(37, 8)).astype(np.float32), g.normal(size=(23, 8)).astype(np.float32)
  dist = ((q[:, None] - kk[None]) ** 2).sum(-1)
  want = np.argsort(dist, axis=1)[:, :5]
  np.testing.assert_array_equal(np.asarray(rec.knn_indices(q, kk, 5)), want)
  # Chunked distance matrices (with padding of the last chunk) select the same neighbours.
  np.testing.assert_array_equal(np.asarray(rec.knn_indices(q, kk, 5, chunk=8)), want)
  np.testing.assert_allclose(np.asarray(rec.squared_distances(q, kk)), dist, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("train", [True, False])
def test_two_stage_matches_numpy(codes, train):
  layer = rec.PeerRegularization(k=3, dropout_rate=0.2)
  variables = _init(layer, codes)
  # Non-trivial BatchNorm affine parameters and running statistics, so each path is exercised.
  g = np.random.default_rng(2)
  variables = jax.tree_util.tree_map(
      lambda x: x + 0.1 * g.normal(size=x.shape).astype(np.float32), variables)
  variables["batch_stats"] = jax.tree_util.tree_map(jnp.abs, variables["batch_stats"])
  c, s, pc, ps = codes
  if train:  # dropout off: no keys given
    (nc, ns), _ = layer.apply(variables, *codes, train=True, mutable=["batch_stats"])
  else:
    nc, ns = layer.apply(variables, *codes, train=False)
  p, st = variables["params"], variables["batch_stats"]
  stats1 = None if train else st["style_stage"]
  stats2 = None if train else st["content_stage"]
  flat = lambda x: x.reshape(x.shape[0], -1, x.shape[-1])
  want_s = _np_stage(p["style_stage"], flat(c), flat(pc), flat(ps), 3, stats1)
  want_c = _np_stage(p["content_stage"], want_s, flat(ps), flat(pc), 3, stats2)
  np.testing.assert_allclose(np.asarray(ns), want_s.reshape(s.shape), rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(np.asarray(nc), want_c.reshape(c.shape), rtol=2e-4, atol=2e-5)


def test_switches_and_one_stage(codes):
  c, s, _, _ = codes
  layer = rec.PeerRegularization(k=3)
  variables = _init(layer, codes)
  nc, ns = layer.apply(variables, *codes, recombine_content=False)
  np.testing.assert_array_equal(np.asarray(nc), c)
  assert not np.allclose(np.asarray(ns), s)
  nc, ns = layer.apply(variables, *codes, recombine_style=False)
  np.testing.assert_array_equal(np.asarray(ns), s)
  basic = rec.PeerRegularization(k=3, bidirectional=False)
  bvars = _init(basic, codes)
  assert "content_stage" not in bvars["params"]
  nc, _ = basic.apply(bvars, *codes)
  np.testing.assert_array_equal(np.asarray(nc), c)


def test_output_is_convex_mix_of_neighbour_values(codes):
  """Every new style code lies in the convex hull of its k nearest peers' style codes."""
  c, _, pc, ps = codes
  layer = rec.PeerRegularization(k=1, bidirectional=False)
  _, ns = layer.apply(_init(layer, codes), *codes)
  flat = lambda x: x.reshape(x.shape[0], -1, x.shape[-1])
  for i in range(c.shape[0]):
    nearest = np.argmin(((flat(c)[i][:, None] - flat(pc)[i][None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(flat(np.asarray(ns))[i], flat(ps)[i][nearest], rtol=1e-5, atol=1e-6)


def test_dropout_per_sample_keys(codes):
  layer = rec.PeerRegularization(k=3, dropout_rate=0.5)
  variables = _init(layer, codes)
  k0, k1, k2 = jax.random.split(jax.random.PRNGKey(3), 3)
  run = lambda *kk: np.asarray(layer.apply(variables, *codes, train=True, dropout_keys=jnp.stack(kk),
                                           mutable=["batch_stats"])[0][1])
  base = run(k0, k1)
  other = run(k0, k2)
  assert np.isfinite(base).all()
  # A sample's dropout mask depends only on its own key: re-keying sample 1 leaves sample 0 alone, so
  # drawing keys per global sample index makes the result independent of the device split.
  np.testing.assert_array_equal(base[0], other[0])
  assert not np.allclose(base[1], other[1])
  nodrop = np.asarray(layer.apply(variables, *codes, train=True, mutable=["batch_stats"])[0][1])
  assert not np.allclose(base, nodrop)


def test_attention_dropout_matches_numpy():
  # Inverted dropout on the edge scores: kept scores are divided by 1 - p, dropped ones are 0.
  g = np.random.default_rng(5)
  n, m, k, d, p = 7, 9, 4, 3, 0.25
  a, s = g.normal(size=n).astype(np.float32), g.normal(size=m).astype(np.float32)
  idx = np.stack([g.permutation(m)[:k] for _ in range(n)]).astype(np.int32)
  v = g.normal(size=(m, d)).astype(np.float32)
  key = jax.random.PRNGKey(11)
  got = rec.neighbour_attention(jnp.asarray(a), jnp.asarray(s), jnp.asarray(idx), jnp.asarray(v),
                                p, key)
  keep = np.asarray(jax.random.bernoulli(key, 1.0 - p, (n, k)))
  assert 0 < keep.mean() < 1
  scores = np.where(keep, (a[:, None] + s[idx]) / (1.0 - p), 0.0).astype(np.float64)
  w = np.exp(np.log1p(np.exp(scores)))
  w /= w.sum(1, keepdims=True)
  np.testing.assert_allclose(np.asarray(got), np.einsum("nk,nkd->nd", w, v[idx]), rtol=1e-5,
                             atol=1e-6)


def test_batchnorm_running_statistics_update():
  # Flax momentum 0.9 is PyTorch's 0.1: running = 0.9 running + 0.1 batch. Flax averages the biased
  # batch variance where PyTorch's BatchNorm1d uses the unbiased one: a factor R / (R - 1) on R
  # positions (under 1.001 at training sizes).
  g = np.random.default_rng(6)
  x = g.normal(1.0, 2.0, (40, 16)).astype(np.float32)
  mlp = rec.AttentionMLP()
  variables = mlp.init(jax.random.PRNGKey(0), jnp.asarray(x), True)
  stats = jax.tree_util.tree_map(lambda v: v + 0.5, variables["batch_stats"])  # not the init
  _, updated = mlp.apply({"params": variables["params"], "batch_stats": stats}, jnp.asarray(x),
                         True, mutable=["batch_stats"])
  h = x.astype(np.float64)
  for i in range(2):
    dense, bn = variables["params"][f"dense_{i}"], variables["params"][f"bn_{i}"]
    h = h @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    mean, var = h.mean(0), h.var(0)
    for name, batch in (("mean", mean), ("var", var)):
      np.testing.assert_allclose(np.asarray(updated["batch_stats"][f"bn_{i}"][name]),
                                 0.9 * np.asarray(stats[f"bn_{i}"][name]) + 0.1 * batch,
                                 rtol=1e-4, atol=1e-5, err_msg=f"bn_{i}/{name}")
    h = np.maximum((h - mean) / np.sqrt(var + 1e-5) * np.asarray(bn["scale"])
                   + np.asarray(bn["bias"]), 0.0)
