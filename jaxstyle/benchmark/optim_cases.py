"""Benchmark cases of the optimisation methods: one optimiser iteration on the image.

An iteration is exactly what `jaxstyle.optimize.minimize` runs per step: the method's objective
(VGG16 features, content/Gram/histogram losses, TV) and its gradient through the sigmoid pixel box,
then the optax update. The carry `(z, opt_state)` is donated and fed back, so consecutive timed
calls are consecutive iterations. L-BFGS iterations include the zoom line search, which may evaluate
the objective more than once.
"""
from typing import List

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import optimize
from jaxstyle.benchmark.case import Case
from jaxstyle.benchmark.model_cases import random_vgg16

OPTIMIZATION = ("gatys", "histogram")
OPTIMIZERS = ("adam", "lbfgs")


def _image(seed: int, size: int) -> np.ndarray:
  """A structured test image: seed 0 smooth gradients and a disc (content), else stripes (style).

  Not plain noise: two noise images have nearly equal Gram matrices, whose float32 difference is
  then rounding error. Not plain ramps either: flat or linear regions make exact or near ties in
  VGG's 2x2 max pools, where the gradient's route is arbitrary (XLA and PyTorch, float32 and
  float64 pick differently). A little noise on a structured image avoids both.
  """
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  if seed == 0:
    disc = ((y - 0.4) ** 2 + (x - 0.5) ** 2 < 0.06).astype(np.float32)
    img = np.stack([x, y, 0.3 + 0.5 * disc], axis=-1)
  else:
    s = 0.5 + 0.5 * np.sin((x + y) * size / 3.0)
    img = np.stack([s, 1 - s, 0.3 + 0.2 * np.cos(x * size / 5.0)], axis=-1)
  noise = np.random.default_rng(seed).uniform(-0.05, 0.05, img.shape)
  return np.clip(img + noise, 0, 1).astype(np.float32)


def init_carry(x0, spec: optimize.OptimizerSpec, slack: float):
  """(z, opt_state) as `optimize.minimize` starts them (strongly typed leaves)."""
  z = optimize.from_image(jnp.asarray(x0), slack)
  opt_state = jax.tree.map(lambda a: jax.lax.convert_element_type(a, jnp.asarray(a).dtype),
                           spec.build().init(z))
  # One buffer per leaf (optax's L-BFGS state shares arrays): the carry is donated.
  return jax.tree.map(lambda a: a.copy(), (z, opt_state))


def _step_fn(objective, spec, slack):
  # The library's own jitted step, inlined into the benchmark's executable.
  def step(carry, args):
    z, opt_state = carry
    z, opt_state, loss = optimize._step(z, opt_state, args, objective=objective,  # pylint: disable=protected-access
                                        spec=spec, slack=slack)
    return (z, opt_state), loss
  return step


def adam_grad(opt_state):
  """The first step's gradient, read back from Adam's first moment (mu = (1 - b1) g from zero)."""
  for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: hasattr(s, "mu")):
    if hasattr(leaf, "mu"):
      return np.asarray(leaf.mu) / 0.1
  raise ValueError("no Adam state found")


def _optim_twin(objective, args, content, spec, slack, what):
  """The PyTorch twin of an Adam iteration, built only when the benchmark asks for it."""

  def twin():
    from jaxstyle.benchmark import torch_cases  # pylint: disable=g-import-not-at-top
    return torch_cases.optim_twin(objective, args, content, spec, slack, what)

  return twin


def _adam_reference(outputs):
  """(loss, first gradient) of one iteration, which the twins reproduce."""
  return float(outputs[1]), adam_grad(outputs[0][1])


def gatys_cases(size, dtype, optimizers) -> List[Case]:
  del dtype  # The Gatys objective computes in float32 (its loss scale needs it).
  from jaxstyle.methods import gatys  # pylint: disable=g-import-not-at-top
  config = gatys.GatysConfig()
  net = random_vgg16().replace_options(pooling=config.pooling)
  # The method's own objective and loss scales, exactly as `gatys.stylize` builds them.
  objective = gatys._objective(config, num_styles=1, has_content=True, masked=False,  # pylint: disable=protected-access
                               alpha=1.0)
  content, style = _image(0, size), _image(1, size)
  args = {"net": net, "blend": jnp.ones((1,), jnp.float32), "masks": None,
          "content": optimize.features(net, content, objective.content_layers),
          "grams": optimize.grams(net, style, objective.style_layers, config.gram_normalize)}
  if hasattr(gatys, "_loss_scales"):
    args["scale"] = gatys._loss_scales(args, config.normalize_layers)  # pylint: disable=protected-access
  out = []
  for name in optimizers:
    spec = optimize.make_optimizer(name)
    carry = lambda spec=spec: init_carry(content, spec, config.slack)
    twin = (_optim_twin(objective, args, content, spec, config.slack, "Gatys")
            if name == "adam" else None)
    out.append(Case(
        "gatys", "optim", name, _step_fn(objective, spec, config.slack), (carry(), args), 1,
        donate_argnums=(0,), carry=True, reference=_adam_reference if name == "adam" else None,
        fresh_args=lambda carry=carry: (carry(), args), torch=twin,
        note=f"VGG16 to relu5_1, {size}x{size} image, init = content"))
  return out


def histogram_cases(size, dtype, optimizers) -> List[Case]:
  del dtype
  from jaxstyle import losses  # pylint: disable=g-import-not-at-top
  from jaxstyle.methods import histogram  # pylint: disable=g-import-not-at-top
  config = histogram.HistogramConfig()
  net = random_vgg16().replace_options(pooling=config.pooling)
  weights = lambda layers, w, what: optimize.layer_weights(layers, w, what)
  objective = histogram.HistogramObjective(
      content_layers=tuple(config.content_layers),
      content_layer_weights=weights(config.content_layers, config.content_layer_weights, "content"),
      style_layers=tuple(config.style_layers),
      style_layer_weights=weights(config.style_layers, config.style_layer_weights, "style"),
      histogram_layers=tuple(config.histogram_layers),
      histogram_layer_weights=weights(config.histogram_layers, config.histogram_layer_weights,
                                      "histogram"),
      content_weight=float(config.content_weight), style_weight=float(config.style_weight),
      histogram_weight=float(config.histogram_weight), tv_weight=float(config.tv_weight),
      gram_normalize=config.gram_normalize, histogram_method=config.histogram_method,
      num_styles=1, has_content=True, masked=False)
  content, style = _image(0, size), _image(1, size)
  layers = tuple(dict.fromkeys(objective.style_layers + objective.histogram_layers))
  feats = optimize.features(net, style, layers)
  args = {"net": net, "blend": jnp.ones((1,), jnp.float32), "masks": None,
          "content": optimize.features(net, content, objective.content_layers),
          "grams": {l: losses.gram_matrix(feats[l], config.gram_normalize)
                    for l in objective.style_layers},
          "hists": {l: [jax.jit(losses.histogram_target)(feats[l])]
                    for l in objective.histogram_layers}}
  if hasattr(histogram, "_loss_scales"):
    args["scale"] = histogram._loss_scales(  # pylint: disable=protected-access
        args, [feats], objective.histogram_layers, config.normalize_layers)
  out = []
  for name in optimizers:
    spec = optimize.make_optimizer(name)
    carry = lambda spec=spec: init_carry(content, spec, config.slack)
    twin = (_optim_twin(objective, args, content, spec, config.slack, "histogram")
            if name == "adam" else None)
    out.append(Case("histogram", "optim", name, _step_fn(objective, spec, config.slack),
                    (carry(), args), 1, donate_argnums=(0,), carry=True,
                    reference=_adam_reference if name == "adam" else None,
                    fresh_args=lambda carry=carry: (carry(), args), torch=twin,
                    note=f"one pyramid level at {size}x{size}, sort-based histogram matching"))
  return out
