"""Losses (`jaxstyle.losses`) against NumPy / PyTorch formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxstyle import losses
from jaxstyle.losses import perceptual

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # the test machine is small and shared


def _feats(rng, shape=(2, 5, 6, 4)):
  return rng.normal(size=shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Content, Gram, mean/std, TV


def test_content_loss(rng):
  a, b = _feats(rng), _feats(rng)
  np.testing.assert_allclose(losses.content_loss(a, b), np.mean((a - b) ** 2), rtol=1e-5)
  mask = (rng.uniform(size=a.shape[:3]) > 0.5).astype(np.float32)
  ref = np.sum((a - b) ** 2 * mask[..., None]) / (mask.sum() * a.shape[-1])
  np.testing.assert_allclose(losses.content_loss(a, b, mask), ref, rtol=1e-5)
  # A [1, H, W] mask broadcasts over the batch.
  ref1 = np.sum((a - b) ** 2 * mask[:1, ..., None]) / (mask[:1].sum() * 2 * a.shape[-1])
  np.testing.assert_allclose(losses.content_loss(a, b, mask[:1]), ref1, rtol=1e-5)


@pytest.mark.parametrize("normalize", ["chw", "hw", "none", None])
def test_gram_matrix_numpy(rng, normalize):
  f = _feats(rng)
  b, h, w, c = f.shape
  flat = f.reshape(b, h * w, c)
  ref = np.einsum("bnc,bnd->bcd", flat, flat)
  ref = ref / {"chw": c * h * w, "hw": h * w, "none": 1, None: 1}[normalize]
  g = losses.gram_matrix(jnp.asarray(f), normalize)
  assert g.shape == (b, c, c)
  np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


def test_gram_matrix_gradient_numpy(rng):
  # The hand-written VJP (one product F (dG + dG^T)) against the analytic gradient in float64.
  f = _feats(rng, (2, 6, 5, 8))
  b, h, w, c = f.shape
  t = rng.normal(size=(b, c, c))
  loss = lambda x: jnp.sum(losses.gram_matrix(x, "chw") * t)
  flat = f.reshape(b, h * w, c).astype(np.float64)
  ref = np.einsum("bnc,bcd->bnd", flat, t + np.swapaxes(t, 1, 2)) / (c * h * w)
  np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(f)), ref.reshape(f.shape), rtol=1e-5,
                             atol=1e-7)


def test_gram_matrix_bfloat16_features(rng):
  # 16-bit features: float32 Gram from 16-bit products (exact in float32), so the result is that of
  # the upcast values; the gradient keeps the features' dtype and is their float32 gradient rounded.
  f = jnp.asarray(_feats(rng, (2, 6, 5, 8)), jnp.bfloat16)
  f32 = f.astype(jnp.float32)
  g = losses.gram_matrix(f, "hw")
  assert g.dtype == jnp.float32
  np.testing.assert_allclose(g, losses.gram_matrix(f32, "hw"), rtol=1e-5, atol=1e-6)
  t = jnp.asarray(rng.normal(size=g.shape), jnp.float32)
  grad = jax.grad(lambda x: jnp.sum(losses.gram_matrix(x, "hw") * t))(f)
  ref = jax.grad(lambda x: jnp.sum(losses.gram_matrix(x, "hw") * t))(f32)
  assert grad.dtype == jnp.bfloat16
  err = np.abs(np.asarray(grad, np.float32) - np.asarray(ref))
  # One rounding of the symmetric cotangent and one of the result: a few bf16 ulps.
  assert err.max() <= 2e-2 * np.abs(np.asarray(ref)).max()


def test_gram_matrix_masked_numpy(rng):
  f = _feats(rng)
  b, h, w, c = f.shape
  mask = rng.uniform(size=(b, h, w)).astype(np.float32)
  flat, m = f.reshape(b, h * w, c), mask.reshape(b, h * w)
  ref = np.einsum("bn,bnc,bnd->bcd", m, flat, flat) / m.sum(1)[:, None, None]
  np.testing.assert_allclose(losses.gram_matrix(f, "hw", mask), ref, rtol=1e-5)
  np.testing.assert_allclose(losses.gram_matrix(f, "chw", mask), ref / c, rtol=1e-5)
  # An all-ones mask is the unmasked Gram.
  np.testing.assert_allclose(losses.gram_matrix(f, "chw", np.ones((h, w))), losses.gram_matrix(f, "chw"),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="mask"):
    losses.gram_matrix(f, "chw", np.ones((h + 1, w)))


def test_gram_loss(rng):
  f, t = _feats(rng), _feats(rng, (1, 7, 3, 4))
  target = np.asarray(losses.gram_matrix(t, "chw"))
  ref = np.mean((np.asarray(losses.gram_matrix(f, "chw")) - target) ** 2)
  np.testing.assert_allclose(losses.gram_loss(f, target), ref, rtol=1e-5)
  np.testing.assert_allclose(losses.gram_loss(f, target[0]), ref, rtol=1e-5)


def test_mean_std_numpy(rng):
  f = _feats(rng) * 3 + 1
  mean, std = losses.mean_std(f)
  np.testing.assert_allclose(mean, f.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(std, np.sqrt(f.var(axis=(1, 2)) + 1e-5), rtol=1e-5)
  mask = (rng.uniform(size=f.shape[:3]) > 0.4).astype(np.float32)
  mean_m, std_m = losses.mean_std(f, mask)
  for b in range(f.shape[0]):
    sel = f[b][mask[b] > 0]
    np.testing.assert_allclose(mean_m[b], sel.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std_m[b], np.sqrt(sel.var(0) + 1e-5), rtol=1e-5)


def test_mean_std_loss(rng):
  f, t = _feats(rng), _feats(rng, (2, 3, 8, 4)) * 2 + 0.5
  ref = (np.mean((f.mean((1, 2)) - t.mean((1, 2))) ** 2)
         + np.mean((np.sqrt(f.var((1, 2)) + 1e-5) - np.sqrt(t.var((1, 2)) + 1e-5)) ** 2))
  np.testing.assert_allclose(losses.mean_std_loss(f, t), ref, rtol=1e-5)
  np.testing.assert_allclose(losses.mean_std_loss(f, losses.mean_std(t)), ref, rtol=1e-5)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_total_variation_numpy(rng, kind):
  x = _feats(rng, (2, 6, 7, 3))
  dy, dx = np.diff(x, axis=1), np.diff(x, axis=2)
  op = np.abs if kind == "l1" else np.square
  np.testing.assert_allclose(losses.total_variation(x, kind, "mean"), op(dy).mean() + op(dx).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.total_variation(x, kind, "sum"), (op(dy).sum() + op(dx).sum()) / 2,
                             rtol=1e-5)
  assert float(losses.total_variation(np.ones((1, 5, 5, 3)))) == 0.0


def test_resize_mask():
  m = np.zeros((1, 8, 8), np.float32)
  m[:, :4] = 1.0
  small = losses.resize_mask(m, (4, 2))
  np.testing.assert_allclose(small, m.reshape(1, 4, 2, 2, 4).mean((2, 4)))
  odd = losses.resize_mask(m[0], (3, 5))
  assert odd.shape == (3, 5) and 0.0 <= float(odd.min()) and float(odd.max()) <= 1.0


# ------------------------------------------------------------------------------------------------
# Adversarial


def test_lsgan(rng):
  real, fake = rng.normal(size=(3, 4, 4, 1)), rng.normal(size=(3, 4, 4, 1))
  np.testing.assert_allclose(losses.lsgan_d(real, fake),
                             0.5 * (np.mean((real - 1) ** 2) + np.mean(fake ** 2)), rtol=1e-5)
  np.testing.assert_allclose(losses.lsgan_g(fake), np.mean((fake - 1) ** 2), rtol=1e-5)


def _np_ralsgan(real, fake, mult):
  """TSPR `GANAuxModel.disc_loss` for one discriminator head."""
  return (np.mean((real - fake.mean() - mult) ** 2) + np.mean((fake - real.mean() + mult) ** 2)) / 2


def test_ralsgan_numpy(rng):
  real, fake = rng.normal(size=(2, 6, 6, 1)) + 0.3, rng.normal(size=(2, 6, 6, 1)) - 0.2
  np.testing.assert_allclose(losses.ralsgan_d(real, fake), _np_ralsgan(real, fake, 1.0), rtol=1e-5)
  np.testing.assert_allclose(losses.ralsgan_g(real, fake), _np_ralsgan(real, fake, -1.0), rtol=1e-5)
  # Several heads (multi-scale discriminator) are averaged.
  real2, fake2 = rng.normal(size=(2, 3, 3, 1)), rng.normal(size=(2, 3, 3, 1))
  ref = (_np_ralsgan(real, fake, 1.0) + _np_ralsgan(real2, fake2, 1.0)) / 2
  np.testing.assert_allclose(losses.ralsgan_d([real, real2], [fake, fake2]), ref, rtol=1e-5)
  # A perfect relativistic discriminator (every real one above every fake) has zero loss.
  const = np.full((2, 4), 0.3)
  np.testing.assert_allclose(losses.ralsgan_d(const + 1.0, const), 0.0, atol=1e-6)
  np.testing.assert_allclose(losses.ralsgan_g(const - 1.0, const), 0.0, atol=1e-6)


def test_ralsgan_generator_and_discriminator_cannot_both_fall(rng):
  """On the same scores, D + G = 2 + mean(u^2) + mean(v^2) >= 2 (u = real - mean fake, v = fake -
  mean real): both start near 1, so when training lowers one the other must rise (TSPR's logged
  `disc` and `gen`; the non-adversarial losses are the ones that must fall)."""
  for shift in (0.0, 0.5, 3.0):
    real, fake = rng.normal(size=(4, 5, 5, 1)) + shift, rng.normal(size=(4, 5, 5, 1))
    u, v = real - fake.mean(), fake - real.mean()
    total = losses.ralsgan_d(real, fake) + losses.ralsgan_g(real, fake)
    np.testing.assert_allclose(total, 2 + np.mean(u ** 2) + np.mean(v ** 2), rtol=1e-5)
    assert total >= 2


# ------------------------------------------------------------------------------------------------
# Metric learning


def test_triplet_margin_matches_torch(rng):
  a, p, n = (rng.normal(size=(5, 8)).astype(np.float32) for _ in range(3))
  ref = torch.nn.functional.triplet_margin_loss(torch.from_numpy(a), torch.from_numpy(p),
                                                torch.from_numpy(n), margin=1.0)
  np.testing.assert_allclose(losses.triplet_margin_loss(a, p, n, 1.0), ref.item(), rtol=1e-5)
  ref3 = torch.nn.functional.triplet_margin_loss(torch.from_numpy(a), torch.from_numpy(p),
                                                 torch.from_numpy(n), margin=3.0, p=1)
  np.testing.assert_allclose(losses.triplet_margin_loss(a, p, n, 3.0, p=1), ref3.item(), rtol=1e-5)


def test_batch_triplet_numpy(rng):
  e = rng.normal(size=(6, 2, 3)).astype(np.float32)
  labels = np.array([0, 1, 0, 2, 1, 0])
  flat = e.reshape(6, -1)
  d = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
  vals = [max(d[a, p] - d[a, n] + 0.7, 0) for a in range(6) for p in range(6) for n in range(6)
          if a != p and labels[a] == labels[p] and labels[n] != labels[a]]
  np.testing.assert_allclose(losses.batch_triplet_margin_loss(e, labels, 0.7), np.mean(vals), rtol=1e-4)
  # No valid triple (all one label): zero and a finite gradient.
  g = jax.jit(jax.grad(losses.batch_triplet_margin_loss))(jnp.asarray(e), np.zeros(6, int))
  assert np.all(np.isfinite(g))


def test_label_margin_and_tspr_contrastive(rng):
  e = rng.normal(size=(5, 4)).astype(np.float32) * 0.3
  labels = np.array([1, 1, 0, 0, 2])
  d = np.linalg.norm(e[:, None] - e[None], axis=-1)
  same = (labels[:, None] == labels[None]) & ~np.eye(5, dtype=bool)
  diff = labels[:, None] != labels[None]
  ref_pair = d[same].mean() + np.maximum(1.0 - d[diff], 0).mean()
  ref_mean = d[same].mean() + max(1.0 - d[diff].mean(), 0)
  np.testing.assert_allclose(losses.label_margin_loss(e, labels, 1.0, "pair"), ref_pair, rtol=1e-4)
  np.testing.assert_allclose(losses.label_margin_loss(e, labels, 1.0, "mean"), ref_mean, rtol=1e-4)
  pos, neg = rng.uniform(size=4), rng.uniform(size=6) * 0.5
  np.testing.assert_allclose(losses.contrastive_margin_loss(pos, neg, 1.0),
                             pos.mean() + max(0.0, 1.0 - neg.mean()), rtol=1e-5)
  # Pulling and pushing: gradient descent separates the labels.
  step = jax.jit(jax.value_and_grad(lambda x: losses.label_margin_loss(x, labels, 1.0)))
  x = jnp.asarray(e)
  first, _ = step(x)
  for _ in range(30):
    val, g = step(x)
    x = x - 0.1 * g
  assert float(val) < 0.5 * float(first)


def test_smooth_l1_distance_matches_torch(rng):
  a = rng.normal(size=(3, 4, 5, 6)).astype(np.float32) * 2
  b = rng.normal(size=(1, 1, 1, 6)).astype(np.float32)
  ref = torch.nn.SmoothL1Loss(reduction="none")(
      torch.from_numpy(a), torch.from_numpy(np.broadcast_to(b, a.shape).copy()))
  ref = ref.sum(-1).flatten(1).mean(1).numpy()
  np.testing.assert_allclose(losses.smooth_l1_distance(a, b), ref, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Perceptual loss


class _StandIn:
  """A loss net with closed-form features: 'a' = 2x - 1, 'b' = 2x2 average pool of x^2."""

  def features(self, x01, layers):
    x = jnp.asarray(x01, jnp.float32)
    b, h, w, c = x.shape
    out = {"a": 2 * x - 1, "b": (x ** 2).reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))}
    return {k: out[k] for k in layers}


def _np_gram(f):
  b, h, w, c = f.shape
  flat = f.reshape(b, h * w, c)
  return np.einsum("bnc,bnd->bcd", flat, flat) / (c * h * w)


def test_perceptual_loss_parts_numpy(rng):
  out = rng.uniform(size=(2, 8, 6, 3)).astype(np.float32)
  content = rng.uniform(size=(2, 8, 6, 3)).astype(np.float32)
  style = rng.uniform(size=(1, 10, 12, 3)).astype(np.float32)
  net = _StandIn()
  grams = perceptual.style_targets(net, style, ["a", "b"])
  assert grams["a"].shape == (1, 3, 3)
  loss, parts = perceptual.perceptual_loss(
      net, out, content, grams, ["b"], ["a", "b"], content_weight=2.0, style_weight=3.0,
      tv_weight=1e-4, layer_weights=[1.0, 0.5])
  fo, fc = net.features(out, ["a", "b"]), net.features(content, ["b"])
  fs = net.features(style, ["a", "b"])
  c_ref = 2.0 * np.mean((np.asarray(fo["b"]) - np.asarray(fc["b"])) ** 2)
  s_ref = 3.0 * sum(w * np.mean((_np_gram(np.asarray(fo[k])) - _np_gram(np.asarray(fs[k]))) ** 2)
                    for k, w in (("a", 1.0), ("b", 0.5)))
  px = out * 255
  tv_ref = 1e-4 * (np.sum(np.diff(px, axis=1) ** 2) + np.sum(np.diff(px, axis=2) ** 2)) / 2
  np.testing.assert_allclose(parts["content"], c_ref, rtol=1e-5)
  np.testing.assert_allclose(parts["style"], s_ref, rtol=1e-4)
  np.testing.assert_allclose(parts["tv"], tv_ref, rtol=1e-4)
  np.testing.assert_allclose(loss, c_ref + s_ref + tv_ref, rtol=1e-4)
  with pytest.raises(ValueError, match="style_grams"):
    perceptual.perceptual_loss(net, out, content, {"a": grams["a"]}, ["b"], ["a", "b"], 1.0, 1.0, 0.0)


def test_perceptual_loss_trains_with_random_vgg(smooth_image, stripes_image):
  vgg = pytest.importorskip("jaxstyle.vgg")
  net = vgg.random_loss_net(0, widths=(4, 8, 8, 8, 8))
  content = jnp.asarray(smooth_image[None, :32, :32])
  grams = perceptual.style_targets(net, jnp.asarray(stripes_image[:32, :32]),
                                   ["relu1_2", "relu2_2"])

  def loss_fn(x, net, grams):
    return perceptual.perceptual_loss(net, x, content, grams, ["relu2_2"], ["relu1_2", "relu2_2"],
                                      1.0, 10.0, 1e-6)[0]

  opt = optax.adam(0.02)
  x = content + 0.1
  state = opt.init(x)

  @jax.jit
  def step(x, state, net, grams):
    val, g = jax.value_and_grad(loss_fn)(x, net, grams)
    upd, state = opt.update(g, state)
    return optax.apply_updates(x, upd), state, val

  first = None
  for _ in range(8):
    x, state, val = step(x, state, net, grams)
    first = float(val) if first is None else first
  assert np.isfinite(float(val)) and float(val) < first


def test_perceptual_loss_per_layer_normalisation_matches_numpy():
  """style_scales / normalize_content divide each layer's loss by its target's mean square."""
  rng = np.random.default_rng(0)
  out = rng.uniform(size=(2, 8, 6, 3)).astype(np.float32)
  content = rng.uniform(size=(2, 8, 6, 3)).astype(np.float32)
  style = rng.uniform(size=(2, 10, 12, 3)).astype(np.float32)
  net = _StandIn()
  grams = perceptual.style_targets(net, style, ["a", "b"])
  scales = perceptual.style_scales(grams)
  fs, fo = net.features(style, ["a", "b"]), net.features(out, ["a", "b"])
  fc = net.features(content, ["b"])
  for k in "ab":
    np.testing.assert_allclose(scales[k], np.mean(_np_gram(np.asarray(fs[k])) ** 2, axis=(1, 2)),
                               rtol=1e-5)
  _, parts = perceptual.perceptual_loss(net, out, content, grams, ["b"], ["a", "b"], 2.0, 3.0, 0.0,
                                        layer_weights=[1.0, 0.5], style_scales=scales,
                                        normalize_content=True)
  fo_b, fc_b = np.asarray(fo["b"]), np.asarray(fc["b"])
  content_ref = 2.0 * np.mean((fo_b - fc_b) ** 2) / np.mean(fc_b ** 2)
  style_ref = 3.0 * sum(
      w * np.mean(np.mean((_np_gram(np.asarray(fo[k])) - _np_gram(np.asarray(fs[k]))) ** 2,
                          axis=(1, 2)) / np.asarray(scales[k]))
      for k, w in (("a", 1.0), ("b", 0.5)))
  np.testing.assert_allclose(parts["content"], content_ref, rtol=1e-5)
  np.testing.assert_allclose(parts["style"], style_ref, rtol=1e-5)
  # One style's scales ([1]) broadcast over the batch.
  one = {k: v[:1] for k, v in grams.items()}
  one_scales = perceptual.style_scales(one)
  _, p1 = perceptual.perceptual_loss(net, out, content, one, [], ["a"], 0.0, 1.0, 0.0,
                                     style_scales=one_scales)
  want = np.mean((_np_gram(np.asarray(fo["a"])) - _np_gram(np.asarray(fs["a"]))[:1]) ** 2)
  np.testing.assert_allclose(p1["style"], want / np.asarray(one_scales["a"])[0], rtol=1e-5)
