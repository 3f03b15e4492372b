"""Risser et al. histogram matching and loss against straightforward NumPy implementations."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxstyle.losses import histogram as H


def _np_match_sort(f, t, mask=None, tmask=None):
  """Per image and channel: the k-th smallest masked source value gets the target quantile k/(n-1)."""
  out = f.copy()
  b_, h, w, c_ = f.shape
  for b in range(b_):
    tb = t[b if t.shape[0] > 1 else 0]
    ms = np.ones(h * w, bool) if mask is None else mask[b if mask.shape[0] > 1 else 0].reshape(-1) > 0.5
    mt = (np.ones(tb.shape[0] * tb.shape[1], bool) if tmask is None
          else tmask[b if tmask.shape[0] > 1 else 0].reshape(-1) > 0.5)
    for c in range(c_):
      src, tgt = f[b, ..., c].reshape(-1).copy(), np.sort(tb[..., c].reshape(-1)[mt])
      idx = np.nonzero(ms)[0]
      order = idx[np.argsort(src[idx], kind="stable")]
      src[order] = np.interp(np.linspace(0, 1, len(idx)), np.linspace(0, 1, len(tgt)), tgt)
      out[b, ..., c] = src.reshape(h, w)
  return out


def _np_match_bins(f, t, mask=None, tmask=None, nb=256):
  """`histogram.cu` in NumPy: source link map from its own binned histogram (pseudo-sort, ties within a
  bin broken by value), target's 256-bin exclusive CDF scaled by n/m, bin lower edge rescaled."""
  f32 = np.float32
  out = f.copy()
  b_, h, w, c_ = f.shape
  for b in range(b_):
    tb = t[b if t.shape[0] > 1 else 0]
    ms = np.ones(h * w, bool) if mask is None else mask[b].reshape(-1) > 0.5
    mt = np.ones(tb.shape[0] * tb.shape[1], bool) if tmask is None else tmask[b].reshape(-1) > 0.5
    for c in range(c_):
      src = f[b, ..., c].reshape(-1).copy()
      idx = np.nonzero(ms)[0]
      vals, tgt = src[idx], tb[..., c].reshape(-1)[mt]
      n, m = len(vals), len(tgt)

      def bins_of(x, lo, hi):
        return np.minimum(np.floor((x - lo) / (hi - lo) * f32(nb)), nb - 1).astype(int)

      sbin = bins_of(vals, vals.min(), vals.max())
      cum_s = np.concatenate([[0], np.cumsum(np.bincount(sbin, minlength=nb))[:-1]])
      link = np.empty(n)
      for k in range(nb):  # pixels of bin k take ranks cum_s[k], cum_s[k] + 1, ... in value order
        members = np.nonzero(sbin == k)[0]
        link[members[np.argsort(vals[members], kind="stable")]] = cum_s[k] + np.arange(len(members))
      tmin, tmax = tgt.min(), tgt.max()
      hist_t = np.bincount(bins_of(tgt, tmin, tmax), minlength=nb).astype(f32)
      cum_t = (np.cumsum(hist_t) - hist_t).astype(f32)
      thresholds = cum_t * (f32(n) / f32(m))
      value = np.array([np.nonzero(l >= thresholds)[0].max() for l in link], f32)
      src[idx] = value / f32(nb) * (tmax - tmin) + tmin
      out[b, ..., c] = src.reshape(h, w)
  return out


def test_equal_sizes_give_exactly_the_target_values(rng):
  f = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
  t = (rng.uniform(size=(2, 5, 6, 3)) ** 2).astype(np.float32)
  out = np.asarray(H.histogram_match(jnp.asarray(f), jnp.asarray(t)))
  for b in range(2):
    for c in range(3):
      np.testing.assert_array_equal(np.sort(out[b, ..., c].ravel()), np.sort(t[b, ..., c].ravel()))
      # Monotone remapping: the order of the pixels is kept.
      np.testing.assert_array_equal(np.argsort(out[b, ..., c].ravel()), np.argsort(f[b, ..., c].ravel()))


@pytest.mark.parametrize("tshape", [(2, 9, 7, 4), (1, 3, 4, 4), (1, 6, 5, 4)])
def test_sort_matches_numpy_for_different_pixel_counts(rng, tshape):
  f = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
  t = rng.gamma(2.0, size=tshape).astype(np.float32)
  out = H.histogram_match(jnp.asarray(f), jnp.asarray(t))
  np.testing.assert_allclose(out, _np_match_sort(f, t), rtol=1e-5, atol=1e-5)


def test_sort_with_masks_matches_numpy(rng):
  f = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
  t = rng.uniform(size=(2, 8, 5, 3)).astype(np.float32) * 4 - 1
  mask = rng.uniform(size=(2, 7, 6)).astype(np.float32)
  tmask = rng.uniform(size=(2, 8, 5)).astype(np.float32)
  out = np.asarray(H.histogram_match(f, t, mask, tmask))
  np.testing.assert_allclose(out, _np_match_sort(f, t, mask, tmask), rtol=1e-5, atol=1e-5)
  keep = mask <= 0.5
  np.testing.assert_array_equal(out[keep], f[keep])  # outside the mask nothing moves
  assert out[~keep].min() >= t[tmask > 0.5].min() - 1e-6
  assert out[~keep].max() <= t[tmask > 0.5].max() + 1e-6


@pytest.mark.parametrize("tshape", [(2, 6, 5, 3), (1, 11, 9, 3)])
def test_bins_matches_numpy_cuda_algorithm(rng, tshape):
  f = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
  t = rng.gamma(1.5, size=tshape).astype(np.float32)
  out = H.histogram_match(jnp.asarray(f), jnp.asarray(t), method="bins")
  np.testing.assert_allclose(out, _np_match_bins(f, t), rtol=1e-5, atol=1e-5)


def test_bins_with_masks_matches_numpy(rng):
  f = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
  t = rng.uniform(size=(2, 6, 7, 2)).astype(np.float32)
  mask = (rng.uniform(size=(2, 8, 8)) > 0.3).astype(np.float32)
  tmask = (rng.uniform(size=(2, 6, 7)) > 0.5).astype(np.float32)
  out = H.histogram_match(f, t, mask, tmask, method="bins", bins=16)
  np.testing.assert_allclose(out, _np_match_bins(f, t, mask, tmask, nb=16), rtol=1e-5, atol=1e-5)


def test_bins_approaches_sort_with_many_pixels(rng):
  f = rng.normal(size=(1, 32, 32, 2)).astype(np.float32)
  t = rng.uniform(size=(1, 32, 32, 2)).astype(np.float32)
  exact = H.histogram_match(f, t)
  binned = H.histogram_match(f, t, method="bins")
  # The binned map is the target quantile rounded down to a bin edge: at most a few bins off.
  assert float(jnp.max(jnp.abs(exact - binned))) < 4.0 / 256


def test_precomputed_target_and_jit(rng):
  f = rng.normal(size=(3, 5, 4, 2)).astype(np.float32)
  t = rng.uniform(size=(1, 6, 6, 2)).astype(np.float32)
  tgt = H.histogram_target(jnp.asarray(t))
  match = jax.jit(H.histogram_match, static_argnames=("method", "bins"))
  for method in ("sort", "bins"):
    np.testing.assert_allclose(match(f, tgt, method=method), H.histogram_match(f, t, method=method),
                               atol=1e-6)
  with pytest.raises(ValueError, match="target_mask"):
    H.histogram_match(f, tgt, target_mask=np.ones((1, 6, 6)))


def test_empty_masks_leave_features_unchanged(rng):
  f = rng.normal(size=(1, 4, 4, 2)).astype(np.float32)
  t = rng.uniform(size=(1, 4, 4, 2)).astype(np.float32)
  for method in ("sort", "bins"):
    out = H.histogram_match(f, t, target_mask=np.zeros((1, 4, 4)), method=method)
    np.testing.assert_array_equal(out, f)
    loss = H.histogram_loss(f, t, mask=np.zeros((1, 4, 4)), method=method)
    assert float(loss) == 0.0


def test_histogram_loss_value_and_gradient(rng):
  f = jnp.asarray(rng.normal(size=(2, 5, 5, 3)).astype(np.float32))
  t = jnp.asarray(rng.uniform(size=(1, 7, 6, 3)).astype(np.float32))
  matched = H.histogram_match(f, t)
  loss, grad = jax.value_and_grad(H.histogram_loss)(f, t)
  np.testing.assert_allclose(loss, jnp.mean((f - matched) ** 2), rtol=1e-6)
  # The matched map is a constant: d/df mean((f - m)^2) = 2 (f - m) / N.
  np.testing.assert_allclose(grad, 2 * (f - matched) / f.size, rtol=1e-5, atol=1e-8)
  mask = (rng.uniform(size=(2, 5, 5)) > 0.5).astype(np.float32)
  g = jax.grad(H.histogram_loss)(f, t, mask, None, "bins")
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[mask <= 0.5] == 0)


@pytest.mark.parametrize("method", ["sort", "bins"])
def test_adam_steps_decrease_histogram_loss(rng, method):
  x = jnp.asarray(rng.normal(size=(1, 16, 16, 4)).astype(np.float32))
  t = jnp.asarray((rng.exponential(size=(1, 12, 12, 4)) * 2).astype(np.float32))
  tgt = H.histogram_target(t)
  opt = optax.adam(0.3)
  state = opt.init(x)

  @functools.partial(jax.jit, static_argnums=3)
  def step(x, state, tgt, method):
    val, g = jax.value_and_grad(H.histogram_loss)(x, tgt, method=method)
    upd, state = opt.update(g, state)
    return optax.apply_updates(x, upd), state, val

  vals = []
  for _ in range(10):
    x, state, val = step(x, state, tgt, method)
    vals.append(float(val))
  assert np.isfinite(vals).all() and vals[-1] < 0.3 * vals[0]


def test_cpu_host_sort_ranks_equal_xla_sort(rng, monkeypatch):  # pylint: disable=protected-access
  # The CPU path ranks by NumPy in a host callback; other backends by XLA's stable argsort.
  x = np.maximum(rng.standard_normal((2, 5, 300)), 0).astype(np.float32)  # many tied zeros
  x[0, 0, :4] = -0.0
  x[1, 2, 50:80] = 1.5
  valid = np.ones((2, 1, 300), bool)
  valid[1, :, :40] = False
  valid = jnp.broadcast_to(jnp.asarray(valid), x.shape)
  host = jax.jit(H._ranks)(jnp.asarray(x), valid)
  vmapped = jax.jit(jax.vmap(H._ranks))(jnp.asarray(x), valid)
  assert "callback" in str(jax.make_jaxpr(H._ranks)(x, valid))
  with monkeypatch.context() as m:
    m.setattr(jax, "default_backend", lambda: "gpu")
    jax.clear_caches()
    try:
      assert "callback" not in str(jax.make_jaxpr(H._ranks)(x, valid))
      xla = jax.jit(H._ranks)(jnp.asarray(x), valid)
    finally:
      jax.clear_caches()  # later tests must not reuse the traces of the patched backend
  np.testing.assert_array_equal(host, xla)
  np.testing.assert_array_equal(vmapped, xla)
  assert sorted(np.asarray(host)[0, 0].tolist()) == list(range(300))


def test_masked_histogram_loss_averages_over_the_region(rng):
  # The mean runs over the masked pixels times the channels, so the scale does not depend on area.
  f = jnp.asarray(rng.normal(size=(2, 6, 7, 3)).astype(np.float32))
  t = jnp.asarray(rng.normal(2.0, 0.5, (1, 5, 5, 3)).astype(np.float32))
  mask = np.zeros((2, 6, 7), np.float32)
  mask[0, 1:4, 2:6] = 1.0
  mask[1, 3:, :3] = 1.0
  loss = H.histogram_loss(f, t, jnp.asarray(mask))
  matched = np.asarray(H.histogram_match(f, t, jnp.asarray(mask)), np.float64)
  sq = (np.asarray(f, np.float64) - matched) ** 2 * mask[..., None]
  np.testing.assert_allclose(float(loss), sq.sum() / (mask.sum() * f.shape[-1]), rtol=1e-5)
