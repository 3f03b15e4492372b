"""Tests for Risser et al.'s histogram-loss synthesis (jaxstyle.methods.histogram), with a tiny
random VGG16 as the loss network."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import api
from jaxstyle import optimize
from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.methods import histogram

WIDTHS = (8, 16, 16, 16, 16)
LAYERS = ("relu1_1", "relu2_1", "relu3_1")
CONFIG = histogram.HistogramConfig(content_layers=("relu2_2",), style_layers=LAYERS,
                                   histogram_layers=LAYERS,
                                   histogram_layer_weights=(1.0, 0.5, 0.25),
                                   content_weight=1.0, style_weight=100.0, histogram_weight=1.0,
                                   scales=2)
S = 32
NET = vgg.random_loss_net(0, widths=WIDTHS)


def _texture(seed=0):
  """Blobs of two colours on a third: a texture with a distinctive, non-Gaussian histogram."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:S, 0:S].astype(np.float32)
  img = np.tile(np.array([0.9, 0.8, 0.2], np.float32), (S, S, 1))
  for cy, cx in rng.uniform(0, S, (8, 2)):
    blob = (y - cy) ** 2 + (x - cx) ** 2 < 12
    img[blob] = [0.1, 0.2, 0.7] if cy > S / 2 else [0.8, 0.1, 0.1]
  return img


def _sorted_colour_distance(a, b):
  """1-D Wasserstein distance between the per-channel colour distributions (equal pixel counts)."""
  return float(np.mean(np.abs(np.sort(a.reshape(-1, 3), 0) - np.sort(b.reshape(-1, 3), 0))))


def test_texture_synthesis_without_content():
  style = _texture()
  seen = []
  out = histogram.synthesize(None, [style], CONFIG, NET, steps=15, size=S, seed=1,
                             progress=lambda i, l: seen.append((i, l)))
  assert out.shape == (S, S, 3) and out.dtype == np.float32
  assert 0.0 <= out.min() and out.max() <= 1.0
  assert [i for i, _ in seen] == list(range(1, 31))  # 2 pyramid levels x 15 steps
  fine = [l for i, l in seen if i > 15]
  assert fine[-1] < fine[0]
  noise = optimize.initial_image("noise", None, (S, S), seed=1)
  # The synthesised colours moved towards the texture's distribution.
  assert _sorted_colour_distance(out, style) < 0.7 * _sorted_colour_distance(noise, style)


def test_texture_size_follows_style_aspect():
  style = np.concatenate([_texture(), _texture(1)], axis=1)   # 32 x 64
  out = histogram.synthesize(None, [style], dataclasses.replace(CONFIG, scales=1), NET, steps=2,
                             size=48, optimizer="adam")
  assert out.shape == (24, 48, 3)


def test_objective_is_gram_plus_histogram_terms(smooth_image):
  style = _texture()
  objective = histogram.HistogramObjective(
      content_layers=(), content_layer_weights=(), style_layers=("relu1_1",),
      style_layer_weights=(1.0,), histogram_layers=("relu1_1",), histogram_layer_weights=(0.5,),
      content_weight=0.0, style_weight=2.0, histogram_weight=3.0, tv_weight=0.0,
      gram_normalize="chw", histogram_method="sort", num_styles=1, has_content=False, masked=False)
  x = np.random.default_rng(0).uniform(0, 1, (S, S, 3)).astype(np.float32)
  fx = np.asarray(NET.features(x[None], ("relu1_1",))["relu1_1"][0], np.float64).reshape(-1, 8)
  fs = np.asarray(NET.features(style[None], ("relu1_1",))["relu1_1"][0], np.float64).reshape(-1, 8)
  gram = lambda f: f.T @ f / f.size  # noqa: E731
  # NumPy histogram matching with equal pixel counts: the k-th smallest source value in each channel
  # takes the k-th smallest target value.
  matched = np.empty_like(fx)
  for c in range(fx.shape[1]):
    matched[np.argsort(fx[:, c], kind="stable"), c] = np.sort(fs[:, c])
  expected = (2.0 * np.mean((gram(fx) - gram(fs)) ** 2) / np.mean(gram(fs) ** 2)
              + 3.0 * 0.5 * np.mean((fx - matched) ** 2) / np.mean(fs ** 2))
  args = {"net": NET, "content": None, "masks": None, "blend": jnp.ones((1,)),
          "grams": {"relu1_1": jnp.asarray(gram(fs)[None], jnp.float32)},
          "hists": {"relu1_1": [jax.jit(histogram.losses.histogram_target)(
              jnp.asarray(fs.reshape(1, S, S, 8), jnp.float32))]}}
  style_feats = [{"relu1_1": jnp.asarray(fs.reshape(1, S, S, 8), jnp.float32)}]
  args["scale"] = histogram._loss_scales(args, style_feats, ("relu1_1",), normalize=True)
  np.testing.assert_allclose(float(jax.jit(objective)(jnp.asarray(x), args)), expected, rtol=1e-4)


def test_style_transfer_and_localised_masks(smooth_image):
  content = 0.3 + 0.4 * smooth_image[:S, :S]
  red = np.tile(np.array([0.9, 0.1, 0.1], np.float32), (S, S, 1))
  red = red * (0.8 + 0.2 * _texture()[..., :1])
  blue = red[..., ::-1].copy()
  top = np.zeros((S, S), np.float32)
  top[: S // 2] = 1.0
  out = histogram.synthesize(content, [red, blue], dataclasses.replace(CONFIG, scales=1), NET,
                             masks=[top, 1.0 - top], steps=30)
  redness = out[..., 0] - out[..., 2]
  assert redness[: S // 2 - 2].mean() > 0.2       # style 0 (red) in the top half
  assert redness[S // 2 + 2:].mean() < -0.2       # style 1 (blue) in the bottom half


def test_validation_and_run_stylize(monkeypatch, smooth_image):
  style = _texture()
  with pytest.raises(ConfigError, match="histogram_method"):
    histogram.synthesize(None, [style], dataclasses.replace(CONFIG, histogram_method="knn"), NET,
                         steps=1)
  with pytest.raises(ConfigError, match="histogram layer weights"):
    histogram.synthesize(None, [style], dataclasses.replace(CONFIG, histogram_layer_weights=(1, 2)),
                         NET, steps=1)
  with pytest.raises(ConfigError, match="masks need a content image"):
    histogram.synthesize(None, [style], CONFIG, NET, masks=[np.ones((S, S))], steps=1)
  monkeypatch.setattr(vgg, "load_loss_net", lambda weights, pooling="max": NET)
  request = api.StylizeRequest(method="histogram", content=None, styles=[style], size=S, steps=2,
                               optimizer="adam",
                               overrides={"scales": "1", "style_layers": "relu1_1",
                                          "histogram_layers": "relu1_1",
                                          "histogram_layer_weights": "1"})
  out = api.get_method("histogram").run_stylize(request)
  assert out.shape == (S, S, 3)
  request.preserve_color = "luminance"
  with pytest.raises(ConfigError, match="preserve_color"):
    api.get_method("histogram").run_stylize(request)
