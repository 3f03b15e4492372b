"""Image optimisation driver shared by the optimisation methods (Gatys, Risser histogram losses).

A method describes its problem as an *objective*: a hashable callable `objective(x, args) -> loss`
where `x` is one `[H, W, 3]` image in [0, 1] and `args` is a pytree of arrays (the loss network's
parameters, precomputed style targets, masks). Objectives are frozen dataclasses, so the jit cache
is keyed by their settings: a second run with the same settings and sizes reuses the compiled step,
and the VGG weights travel as arguments instead of being baked into the executable.

Pixel range. The optimiser works on an unconstrained `z` and the image is
`x = (1 + 2 s) * sigmoid(z) - s` with slack `s` (default 0.1), clipped to [0, 1] at the end.
Why not clip after each step: L-BFGS builds its curvature model and its zoom line search from the
exact steps it takes, and a projection would silently corrupt both. A plain sigmoid box (s = 0)
would keep x in (0, 1) but freeze pure black/white content pixels, where its slope is ~0; with the
slack those pixels start at sigmoid = 0.08 / 0.92, with a usable slope, and the final clip only ever
removes the small overshoot.
"""
import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxstyle import image as image_lib
from jaxstyle.errors import ConfigError

OPTIMIZERS = ("lbfgs", "adam")
DEFAULT_SLACK = 0.1
# Adam moves z, not pixels; 0.05 in z is about 0.01 in mid-range pixel values per step.
DEFAULT_ADAM_LR = 0.05

Progress = Optional[Callable[[int, float], None]]


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """Which optimiser, hashable so that it can be a static argument of the jitted step."""
  name: str = "lbfgs"
  learning_rate: Optional[float] = None   # None: L-BFGS line search alone / DEFAULT_ADAM_LR
  memory_size: int = 20                   # L-BFGS curvature pairs

  def build(self) -> optax.GradientTransformationExtraArgs:
    if self.name == "lbfgs":
      return optax.lbfgs(learning_rate=self.learning_rate, memory_size=self.memory_size)
    if self.name == "adam":
      return optax.adam(self.learning_rate or DEFAULT_ADAM_LR)
    raise ConfigError(f"unknown optimizer {self.name!r}; choose one of {', '.join(OPTIMIZERS)}")


def make_optimizer(name: str = "lbfgs", learning_rate: Optional[float] = None,
                   memory_size: int = 20) -> OptimizerSpec:
  """Validates the user's optimiser choice (`memory_size`: L-BFGS curvature pairs)."""
  if name not in OPTIMIZERS:
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
  if learning_rate is not None and not learning_rate > 0:
    raise ConfigError(f"learning rate must be positive, got {learning_rate}")
  if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
    raise ConfigError(f"lbfgs_memory must be a positive integer, got {memory_size!r}")
  return OptimizerSpec(name, None if learning_rate is None else float(learning_rate),
                       memory_size)


def to_image(z: jax.Array, slack: float = DEFAULT_SLACK) -> jax.Array:
  """Unconstrained parameters -> image in (-slack, 1 + slack)."""
  return (1.0 + 2.0 * slack) * jax.nn.sigmoid(z) - slack


def from_image(x, slack: float = DEFAULT_SLACK) -> jax.Array:
  """Image in [0, 1] -> parameters `z` with `to_image(z) == x`."""
  p = (jnp.asarray(x, jnp.float32) + slack) / (1.0 + 2.0 * slack)
  p = jnp.clip(p, 1e-4, 1.0 - 1e-4)
  return jnp.log(p) - jnp.log1p(-p)


# No donation: the incoming z may be kept as the best iterate, and images are small anyway.
@functools.partial(jax.jit, static_argnames=("objective", "spec", "slack"))
def _step(z, opt_state, args, *, objective, spec: OptimizerSpec, slack: float):
  """One optimiser step on `z`; returns (z, opt_state, loss at the incoming z)."""
  opt = spec.build()

  def f(z):
    return objective(to_image(z, slack), args)

  if spec.name == "lbfgs":
    # Reuses the value/gradient the line search already computed at this point.
    value, grad = optax.value_and_grad_from_state(f)(z, state=opt_state)
    updates, opt_state = opt.update(grad, opt_state, z, value=value, grad=grad, value_fn=f)
  else:
    value, grad = jax.value_and_grad(f)(z)
    updates, opt_state = opt.update(grad, opt_state, z)
  return optax.apply_updates(z, updates), opt_state, value


def minimize(objective: Callable[[jax.Array, Any], jax.Array], x0, args, *, steps: int,
             optimizer: OptimizerSpec = OptimizerSpec(), progress: Progress = None,
             step_offset: int = 0, slack: float = DEFAULT_SLACK) -> np.ndarray:
  """Minimises `objective(x, args)` over images x, starting from `x0`.

  Args:
    objective: hashable callable `(x [H, W, 3] in [0, 1], args) -> scalar loss`.
    x0: `[H, W, 3]` start image in [0, 1].
    args: pytree of arrays handed to the objective (traced, not baked into the executable).
    steps: optimiser iterations (L-BFGS: each may evaluate the objective several times).
    optimizer: from `make_optimizer`.
    progress: called as `progress(step, loss)` after every step (counting from `step_offset + 1`).
    step_offset: added to the reported step numbers (pyramid levels continue the count).
    slack: see the module docstring.

  Returns:
    The optimised image, float32 `[H, W, 3]` clipped to [0, 1].

  Raises:
    ConfigError: when the loss becomes NaN or infinite (diverging settings).
  """
  if steps <= 0:
    raise ConfigError(f"steps must be positive, got {steps}")
  z = from_image(x0, slack)
  # Strong-typed leaves: optax's init makes some weakly typed scalars, which the jitted step returns
  # strongly typed, and that difference alone would compile the step a second time.
  opt_state = jax.tree.map(lambda a: jax.lax.convert_element_type(a, jnp.asarray(a).dtype),
                           optimizer.build().init(z))
  best_z, best = z, np.inf
  for i in range(steps):
    new_z, opt_state, loss = _step(z, opt_state, args, objective=objective, spec=optimizer,
                                   slack=slack)
    loss = float(loss)
    if not np.isfinite(loss):
      raise ConfigError(
          f"the loss became {loss} at step {step_offset + i + 1}; lower the learning rate or the "
          "loss weights (--learning_rate, --set ...)")
    if loss <= best:
      # `loss` belongs to the incoming z; keep the best iterate (Adam can oscillate at the end).
      best, best_z = loss, z
    z = new_z
    if progress is not None:
      progress(step_offset + i + 1, loss)
  if optimizer.name == "lbfgs":
    best_z = z  # the line search only accepts decreasing steps, so the last iterate is the best
  return np.clip(np.asarray(to_image(best_z, slack)), 0.0, 1.0).astype(np.float32)


def pyramid_shapes(hw: Tuple[int, int], scales: int) -> Sequence[Tuple[int, int]]:
  """Sizes of a coarse-to-fine pyramid ending at `hw`: hw / 2^(scales-1), ..., hw / 2, hw."""
  if scales < 1:
    raise ConfigError(f"scales must be at least 1, got {scales}")
  h, w = hw
  return [(max(1, round(h / 2 ** k)), max(1, round(w / 2 ** k))) for k in reversed(range(scales))]


def optimize_pyramid(build: Callable[[Tuple[int, int], int], Tuple[Any, Any]], init, hw, *,
                     scales: int = 1, steps: int, optimizer: OptimizerSpec = OptimizerSpec(),
                     progress: Progress = None, slack: float = DEFAULT_SLACK) -> np.ndarray:
  """Coarse-to-fine optimisation: each level starts from the upsampled result of the previous one.

  Args:
    build: `build(hw, level) -> (objective, args)` for the level of size `hw` (level 0 = coarsest);
      the method rescales its content, styles and masks there.
    init: `[H', W', 3]` start image in [0, 1], resized to the coarsest level.
    hw: final `(H, W)`.
    scales: number of levels (1 = a single run at `hw`).
    steps: optimiser steps per level.
    optimizer, progress, slack: see `minimize` (step numbers run on across levels).

  Returns:
    float32 `[H, W, 3]` in [0, 1].
  """
  x = np.asarray(init, np.float32)
  for level, shape in enumerate(pyramid_shapes(hw, scales)):
    objective, args = build(shape, level)
    x = minimize(objective, image_lib.resize(x, shape), args, steps=steps, optimizer=optimizer,
                 progress=progress, step_offset=level * steps, slack=slack)
  return x


# --------------------------------------------------------------------------------------------------
# Pieces the optimisation methods share (input checks, start images, style targets).


def layer_weights(layers: Sequence[str], weights: Sequence[float], what: str) -> Tuple[float, ...]:
  """One weight per layer: `weights` as given, or a single value broadcast to every layer."""
  weights = tuple(float(w) for w in weights)
  if len(weights) == len(layers):
    return weights
  if len(weights) == 1 or (weights and len(set(weights)) == 1):
    return (weights[0],) * len(layers)
  raise ConfigError(f"{len(weights)} {what} layer weights for {len(layers)} {what} layers "
                    f"({', '.join(layers)})")


def check_inputs(content, styles, style_weights, masks, size):
  """Validates a method's images; returns (styles, blend weights [S], masks or None, output (H, W)).

  Blend weights sum to 1 for style interpolation. With masks each style owns a region, so the
  weights are rescaled to average 1: equal weights then give every region the full style strength.
  """
  if not styles:
    raise ConfigError("at least one style image is required")
  styles = [np.asarray(s, np.float32) for s in styles]
  for s in styles:
    if s.ndim != 3 or s.shape[-1] != 3:
      raise ConfigError(f"style images must be [H, W, 3], got {s.shape}")
  if content is not None:
    content = np.asarray(content)
    if content.ndim != 3 or content.shape[-1] != 3:
      raise ConfigError(f"the content image must be [H, W, 3], got {content.shape}")
    hw = content.shape[:2]
  else:
    hw = image_lib.long_side_shape(styles[0].shape[:2], size) if size else styles[0].shape[:2]
  if style_weights is None:
    blend = np.full(len(styles), 1.0 / len(styles), np.float32)
  else:
    blend = np.asarray(style_weights, np.float32)
    if blend.shape != (len(styles),) or np.any(blend < 0) or blend.sum() <= 0:
      raise ConfigError(f"need {len(styles)} non-negative style weights, not all zero; got "
                        f"{list(style_weights)}")
    blend = blend / blend.sum()
  if masks is not None:
    if content is None:
      raise ConfigError("masks need a content image")
    if len(masks) != len(styles):
      raise ConfigError(f"{len(masks)} masks for {len(styles)} styles")
    masks = [np.asarray(m, np.float32) for m in masks]
    for m in masks:
      if m.shape != tuple(hw):
        raise ConfigError(f"mask shape {m.shape} differs from the content's {tuple(hw)}")
    blend = blend * len(styles)
  return styles, blend, masks, tuple(int(v) for v in hw)


def initial_image(init: str, content, hw, seed: int) -> np.ndarray:
  """'content', 'noise' (uniform white noise, as in Gatys et al.) or a path to an image file."""
  if init == "content":
    if content is None:
      raise ConfigError("init=content needs a content image")
    return np.asarray(content, np.float32)
  if init == "noise":
    return np.random.default_rng(seed).uniform(0.0, 1.0, tuple(hw) + (3,)).astype(np.float32)
  return image_lib.resize(image_lib.load_image(init), hw)


@functools.partial(jax.jit, static_argnames=("layers",))
def _features(net, x, layers):
  return net.features(x[None], layers)


def features(net, img, layers: Sequence[str]) -> dict:
  """{layer: [1, h, w, C]} features of one image (a target: computed once, outside the loop)."""
  return _features(net, jnp.asarray(img, jnp.float32), tuple(layers))


@functools.partial(jax.jit, static_argnames=("layers", "normalize"))
def _grams(net, x, layers, normalize):
  from jaxstyle import losses  # noqa: PLC0415  keeps this module importable without losses
  feats = net.features(x[None], layers)
  return {l: losses.gram_matrix(feats[l], normalize) for l in layers}


def grams(net, img, layers: Sequence[str], normalize: str = "chw") -> dict:
  """{layer: [1, C, C]} Gram matrices of one style image."""
  return _grams(net, jnp.asarray(img, jnp.float32), tuple(layers), normalize)


def scale_image(img, factor: float) -> np.ndarray:
  """Resizes by `factor` (style images follow the pyramid level, so brush size stays put)."""
  img = np.asarray(img, np.float32)
  if factor == 1.0:
    return img
  h, w = img.shape[:2]
  return image_lib.resize(img, (max(16, round(h * factor)), max(16, round(w * factor))))


def check_size(shape, layers: Sequence[str], depth: int, what: str = "image",
               hint: str = "use a larger --size or fewer pyramid scales"):
  """Raises ConfigError when an image of `shape` is too small to reach the deepest of `layers`."""
  from jaxstyle import vgg  # noqa: PLC0415  vgg imports flax; keep the driver import light
  deepest = max(layers, key=lambda l: vgg.layer_stride(l, depth))
  stride = vgg.layer_stride(deepest, depth)
  if min(shape[:2]) < stride:
    raise ConfigError(
        f"a {shape[0]}x{shape[1]} {what} is too small for VGG layer {deepest} (needs at least "
        f"{stride} px per side); {hint}")


def check_styles(styles: Sequence[np.ndarray], layers: Sequence[str], depth: int):
  """`check_size` for style images as the loss sees them (after `scale_image`)."""
  for s in styles:
    check_size(np.shape(s), layers, depth, "style image",
               "use a larger or less elongated style image, or a larger --style_size")
