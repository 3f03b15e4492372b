"""Tests for the optimisation driver (jaxstyle.optimize) and Gatys et al. (jaxstyle.methods.gatys).

A tiny randomly initialised VGG16 stands in for the pretrained loss network. Sizes and configs are
shared between tests on purpose: the jitted step is cached by (objective, shapes), so most tests
reuse one compiled executable.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import api
from jaxstyle import image as image_lib
from jaxstyle import optimize
from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.methods import gatys

WIDTHS = (8, 16, 16, 16, 16)
CONFIG = gatys.GatysConfig(content_layers=("relu2_2",),
                           style_layers=("relu1_1", "relu2_1", "relu3_1"), content_weight=1.0,
                           style_weight=100.0, tv_weight=1.0)
S = 32


@functools.lru_cache(maxsize=None)
def tiny_net(seed=0) -> vgg.LossNet:
  return vgg.random_loss_net(seed, widths=WIDTHS)


def _textures():
  y, x = np.mgrid[0:S, 0:S].astype(np.float32)
  wave = 0.5 + 0.5 * np.sin((x + 2 * y) / 2.0)
  red = np.stack([0.6 + 0.4 * wave, 0.1 * wave, 0.1 + 0.1 * wave], -1)
  blue = np.stack([0.1 * wave, 0.2 + 0.2 * wave, 0.6 + 0.4 * wave], -1)
  return red.astype(np.float32), blue.astype(np.float32)


@pytest.fixture
def content(smooth_image):
  return image_lib.resize(0.3 + 0.4 * smooth_image, (S, S))


# --------------------------------------------------------------------------- the driver


@dataclasses.dataclass(frozen=True)
class Quadratic:
  """A cheap objective with a known minimiser, including pixels at exactly 0 and 1."""

  def __call__(self, x, args):
    return jnp.sum(jnp.square(x - args["target"]))


@pytest.mark.parametrize("name", ["lbfgs", "adam"])
def test_minimize_reaches_box_constrained_optimum(name):
  target = np.random.default_rng(0).uniform(0, 1, (8, 8, 3)).astype(np.float32)
  target[0, 0] = 0.0
  target[-1, -1] = 1.0
  seen = []
  spec = optimize.make_optimizer(name, 0.3 if name == "adam" else None)
  out = optimize.minimize(Quadratic(), np.full((8, 8, 3), 0.5, np.float32), {"target": target},
                          steps=30 if name == "lbfgs" else 200, optimizer=spec,
                          progress=lambda i, l: seen.append((i, l)))
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_allclose(out, target, atol=0.02)
  assert seen[0][0] == 1 and seen[-1][0] == len(seen)
  assert seen[-1][1] < 1e-2 * seen[0][1]


def test_minimize_stops_on_non_finite_loss():
  @dataclasses.dataclass(frozen=True)
  class Bad:
    def __call__(self, x, args):
      return jnp.sum(x) / 0.0 * 0.0  # NaN

  with pytest.raises(ConfigError, match="nan"):
    optimize.minimize(Bad(), np.zeros((4, 4, 3), np.float32), {}, steps=3,
                      optimizer=optimize.make_optimizer("adam"))


def test_pyramid_levels_and_sizes():
  assert optimize.pyramid_shapes((48, 64), 3) == [(12, 16), (24, 32), (48, 64)]
  assert optimize.pyramid_shapes((5, 7), 1) == [(5, 7)]
  seen, target = [], np.random.default_rng(1).uniform(0.2, 0.8, (48, 64, 3)).astype(np.float32)

  def build(shape, level):
    seen.append((shape, level))
    return Quadratic(), {"target": image_lib.resize(target, shape)}

  steps = []
  out = optimize.optimize_pyramid(build, np.full((10, 10, 3), 0.5, np.float32), (48, 64), scales=3,
                                  steps=60, optimizer=optimize.make_optimizer("adam", 0.3),
                                  progress=lambda i, l: steps.append(i))
  assert seen == [((12, 16), 0), ((24, 32), 1), ((48, 64), 2)]
  assert steps == list(range(1, 181))                    # step numbers continue across levels
  assert out.shape == (48, 64, 3)
  assert np.abs(out - target).mean() < 0.02


def test_optimizer_and_init_validation(content):
  with pytest.raises(ConfigError, match="optimizer"):
    optimize.make_optimizer("sgd")
  with pytest.raises(ConfigError, match="learning rate"):
    optimize.make_optimizer("adam", -1.0)
  with pytest.raises(ConfigError, match="lbfgs_memory must be a positive integer"):
    optimize.make_optimizer("lbfgs", None, 0)
  # The history length reaches optax: its state stores that many curvature pairs.
  state = optimize.make_optimizer("lbfgs", None, 7).build().init(jnp.zeros((4, 3)))
  assert {leaf.shape for leaf in jax.tree_util.tree_leaves(state) if leaf.ndim == 3} == {(7, 4, 3)}
  x = optimize.initial_image("noise", None, (6, 5), seed=3)
  assert x.shape == (6, 5, 3) and 0 <= x.min() and x.max() <= 1 and x.std() > 0.2
  np.testing.assert_array_equal(x, optimize.initial_image("noise", None, (6, 5), seed=3))
  with pytest.raises(Exception, match="does not exist"):
    optimize.initial_image("/nonexistent/init.png", content, (S, S), 0)


# --------------------------------------------------------------------------- the objective


def test_objective_matches_numpy_reference(content):
  red, blue = _textures()
  net = tiny_net()
  objective = gatys._objective(CONFIG, num_styles=2, has_content=True, masked=False, alpha=1.0)
  layers = objective.layers()
  x = np.random.default_rng(0).uniform(0, 1, (S, S, 3)).astype(np.float32)
  feats = {k: np.asarray(v, np.float64) for k, v in optimize.features(net, x, layers).items()}
  ctarget = {k: np.asarray(v) for k, v in optimize.features(net, content, ("relu2_2",)).items()}
  blend = np.array([0.7, 0.3], np.float32)

  def gram(f):
    _, h, w, c = f.shape
    f = f.reshape(h * w, c)
    return f.T @ f / (c * h * w)

  # Each layer's loss is divided by its target's mean square (normalize_layers).
  c = ctarget["relu2_2"]
  expected = CONFIG.content_weight * np.mean((feats["relu2_2"] - c) ** 2) / np.mean(c ** 2)
  grams = {}
  for layer in CONFIG.style_layers:
    targets = [gram(np.asarray(optimize.features(net, s, (layer,))[layer], np.float64))
               for s in (red, blue)]
    grams[layer] = jnp.asarray(np.stack(targets), jnp.float32)
    for w, t in zip(blend, targets):
      expected += CONFIG.style_weight * w * np.mean((gram(feats[layer]) - t) ** 2) / np.mean(t ** 2)
  expected += CONFIG.tv_weight * (np.mean(np.diff(x, axis=0) ** 2)
                                 + np.mean(np.diff(x, axis=1) ** 2))
  args = {"net": net, "content": ctarget, "grams": grams, "blend": jnp.asarray(blend),
          "masks": None}
  args["scale"] = gatys._loss_scales(args, normalize=True)
  np.testing.assert_allclose(float(jax.jit(objective)(jnp.asarray(x), args)), expected, rtol=2e-4)


# --------------------------------------------------------------------------- stylize


@pytest.mark.parametrize("name", ["lbfgs", "adam"])
def test_stylize_loss_falls(content, name):
  red, _ = _textures()
  seen = []
  out = gatys.stylize(content, [red], CONFIG, tiny_net(), optimizer=name, steps=10,
                      learning_rate=0.3 if name == "adam" else None,
                      progress=lambda i, l: seen.append(l))
  assert out.shape == (S, S, 3) and out.dtype == np.float32
  assert 0.0 <= out.min() and out.max() <= 1.0
  assert len(seen) == 10 and seen[-1] < (0.6 if name == "lbfgs" else 0.8) * seen[0]
  # The style is red: the result moved towards it.
  assert out[..., 0].mean() - out[..., 2].mean() > content[..., 0].mean() - content[..., 2].mean()


def test_mask_confines_each_style_to_its_region(content):
  red, blue = _textures()
  left = np.zeros((S, S), np.float32)
  left[:, : S // 2] = 1.0
  out = gatys.stylize(content, [red, blue], CONFIG, tiny_net(), masks=[left, 1.0 - left],
                      optimizer="lbfgs", steps=40)
  redness = out[..., 0] - out[..., 2]
  # Style 0 (red) rules the left half, style 1 (blue) the right half.
  assert redness[:, : S // 2 - 2].mean() > 0.2
  assert redness[:, S // 2 + 2:].mean() < -0.2


def test_style_interpolation_weights(content):
  red, blue = _textures()
  net = tiny_net()
  only_red = gatys.stylize(content, [red, blue], CONFIG, net, style_weights=[1.0, 0.0],
                           optimizer="adam", learning_rate=0.3, steps=10)
  alone = gatys.stylize(content, [red], CONFIG, net, optimizer="adam", learning_rate=0.3, steps=10)
  np.testing.assert_allclose(only_red, alone, atol=2e-3)  # weight 0 removes a style's loss
  mixed = gatys.stylize(content, [red, blue], CONFIG, net, style_weights=[1.0, 1.0],
                        optimizer="adam", learning_rate=0.3, steps=10)
  redness = lambda x: float((x[..., 0] - x[..., 2]).mean())  # noqa: E731
  assert redness(only_red) > redness(mixed)


def test_luminance_preservation_keeps_content_chrominance(content):
  red, _ = _textures()
  out = gatys.stylize(content, [red], CONFIG, tiny_net(), optimizer="lbfgs", steps=10,
                      preserve_color="luminance")
  uv_out = image_lib.rgb_to_yuv(out)[..., 1:]
  uv_content = image_lib.rgb_to_yuv(content)[..., 1:]
  np.testing.assert_allclose(uv_out, uv_content, atol=0.03)
  plain = gatys.stylize(content, [red], CONFIG, tiny_net(), optimizer="lbfgs", steps=10)
  assert np.abs(image_lib.rgb_to_yuv(plain)[..., 1:] - uv_content).mean() > 0.05


def test_histogram_preservation_recolours_the_style(content):
  red, _ = _textures()
  out = gatys.stylize(content, [red], CONFIG, tiny_net(), optimizer="lbfgs", steps=10,
                      preserve_color="histogram")
  # The style was recoloured to the content's palette before the transfer, so no red cast appears.
  np.testing.assert_allclose(out.mean((0, 1)), content.mean((0, 1)), atol=0.08)


def test_input_validation(content):
  red, blue = _textures()
  net = tiny_net()
  bad = [
      (dict(masks=[np.ones((S, S))]), "masks"),
      (dict(style_weights=[1.0]), "style weights"),
      (dict(preserve_color="sepia"), "preserve_color"),
      (dict(optimizer="sgd"), "optimizer"),
  ]
  for kwargs, match in bad:
    with pytest.raises(ConfigError, match=match):
      gatys.stylize(content, [red, blue], CONFIG, net, steps=1, **kwargs)
  with pytest.raises(ConfigError, match="unknown VGG16 layer"):
    gatys.stylize(content, [red], dataclasses.replace(CONFIG, style_layers=("relu9_1",)), net)
  with pytest.raises(ConfigError, match="too small"):
    gatys.stylize(content, [red], dataclasses.replace(CONFIG, scales=5), net, steps=1)


def test_run_stylize_applies_overrides(content, monkeypatch):
  red, _ = _textures()
  monkeypatch.setattr(vgg, "load_loss_net", lambda weights, pooling="max": tiny_net())
  request = api.StylizeRequest(method="gatys", content=content, styles=[red], steps=3,
                               optimizer="adam",
                               overrides={"tv_weight": "1.0", "content_weight": "1",
                                          "content_layers": "relu2_2",
                                          "style_layers": "relu1_1,relu2_1,relu3_1"})
  seen = []
  request.progress = lambda i, l: seen.append(i)
  out = api.get_method("gatys").run_stylize(request)
  assert out.shape == (S, S, 3) and seen == [1, 2, 3]
  request.overrides = {"style_wieght": "3"}
  with pytest.raises(ConfigError, match="unknown setting 'style_wieght'"):
    api.get_method("gatys").run_stylize(request)
