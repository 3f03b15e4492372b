"""Risser, Wilmot & Barnes, "Stable and Controllable Neural Texture Synthesis and Style Transfer
Using Histogram Losses" (arXiv 1701.08893).

Gram matrices fix only second-order feature statistics, so optimised textures drift in brightness
and contrast. Adding a histogram loss at each style layer (every channel's value distribution must
equal the style's, `jaxstyle.losses.histogram_loss`) makes synthesis stable. Synthesis runs coarse
to fine (3 pyramid levels by default, the style image scaled with each level). Without a content
image this is texture synthesis from noise; with one, a content loss makes it style transfer. Masks
localise the style losses (style i only where mask i is bright), the paper's localised transfer.
"""
import dataclasses
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import api
from jaxstyle import image as image_lib
from jaxstyle import losses
from jaxstyle import optimize
from jaxstyle import vgg
from jaxstyle.errors import ConfigError

_RELU_X_1 = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclasses.dataclass(frozen=True)
class HistogramConfig:
  """Loss composition and schedule.

  As in `jaxstyle.methods.gatys`, with `normalize_layers` every layer's loss is divided by its
  target's mean square (content features, Gram entries, style features for the histogram term), so
  the weights are relative and do not depend on the loss network's feature scales. The histogram
  layer weights fall with depth because shallow layers carry the colour and contrast the loss is
  meant to fix (the co-author code's weights fall similarly, 2e9 .. 3.5e7, on raw features).
  The optimiser is `synthesize`'s: L-BFGS by default, as for Gatys here; the co-author code runs
  Adam at lr 0.05 for 1000 iterations per scale (`--optimizer=adam --learning_rate=0.05
  --steps=1000` in `launch/stylize.py`).

  Attributes:
    content_layers / content_layer_weights: content loss (style transfer only).
    style_layers / style_layer_weights: Gram losses.
    histogram_layers / histogram_layer_weights: histogram losses.
    content_weight, style_weight, histogram_weight, tv_weight: term weights (TV: mean squared
      neighbour differences).
    normalize_layers: divide each layer's loss by its target's mean square.
    gram_normalize: 'chw', 'hw' or 'none'.
    histogram_method: 'sort' (exact quantile matching) or 'bins' (the co-author's 256 bins).
    scales: coarse-to-fine pyramid levels.
    pooling: loss network pooling.
    lbfgs_memory: curvature pairs L-BFGS keeps (memory: 2 images' worth per pair).
    slack: pixel-range slack of the optimiser's sigmoid box.
  """
  content_layers: Tuple[str, ...] = ("relu4_2",)
  content_layer_weights: Tuple[float, ...] = (1.0,)
  style_layers: Tuple[str, ...] = _RELU_X_1
  style_layer_weights: Tuple[float, ...] = (1.0,)
  histogram_layers: Tuple[str, ...] = _RELU_X_1
  histogram_layer_weights: Tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.1)
  content_weight: float = 1.0
  style_weight: float = 10.0
  histogram_weight: float = 10.0
  tv_weight: float = 0.0
  normalize_layers: bool = True
  gram_normalize: str = "chw"
  histogram_method: str = "sort"
  scales: int = 3
  pooling: str = "max"
  slack: float = optimize.DEFAULT_SLACK
  lbfgs_memory: int = 20          # L-BFGS curvature pairs (neural-style-pt keeps 100)


@dataclasses.dataclass(frozen=True)
class HistogramObjective:
  """Hashable loss. `args` = {'net', 'content': {layer: feats} or None, 'grams': {layer: [S, C, C]},
  'hists': {layer: [HistogramTarget per style]}, 'blend': [S], 'masks': [S, H, W] or None,
  'scale': {'content': {layer: []}, 'style' / 'hist': {layer: [S]}} loss divisors}."""
  content_layers: Tuple[str, ...]
  content_layer_weights: Tuple[float, ...]
  style_layers: Tuple[str, ...]
  style_layer_weights: Tuple[float, ...]
  histogram_layers: Tuple[str, ...]
  histogram_layer_weights: Tuple[float, ...]
  content_weight: float
  style_weight: float
  histogram_weight: float
  tv_weight: float
  gram_normalize: str
  histogram_method: str
  num_styles: int
  has_content: bool
  masked: bool

  def layers(self) -> Tuple[str, ...]:
    content = self.content_layers if self.has_content else ()
    return tuple(dict.fromkeys(content + self.style_layers + self.histogram_layers))

  def __call__(self, x: jax.Array, args) -> jax.Array:
    feats = args["net"].features(x[None], self.layers())
    blend = args["blend"]

    def mask(s, f):
      return losses.resize_mask(args["masks"][s], f.shape[1:3])[None] if self.masked else None

    loss = jnp.float32(0.0)
    if self.has_content:
      for layer, w in zip(self.content_layers, self.content_layer_weights):
        term = losses.content_loss(feats[layer], args["content"][layer])
        loss += self.content_weight * w * term / args["scale"]["content"][layer]
    for layer, w in zip(self.style_layers, self.style_layer_weights):
      for s in range(self.num_styles):
        term = losses.gram_loss(feats[layer], args["grams"][layer][s], self.gram_normalize,
                                mask(s, feats[layer]))
        loss += self.style_weight * w * blend[s] * term / args["scale"]["style"][layer][s]
    for layer, w in zip(self.histogram_layers, self.histogram_layer_weights):
      for s in range(self.num_styles):
        term = losses.histogram_loss(feats[layer], args["hists"][layer][s], mask(s, feats[layer]),
                                     method=self.histogram_method)
        loss += self.histogram_weight * w * blend[s] * term / args["scale"]["hist"][layer][s]
    if self.tv_weight:
      loss += self.tv_weight * losses.total_variation(x, "l2", "mean")
    return loss


def _check_config(config: HistogramConfig, loss_net: vgg.LossNet):
  for layers in (config.content_layers, config.style_layers, config.histogram_layers):
    vgg.check_layers(layers, loss_net.depth)
  if config.gram_normalize not in ("chw", "hw", "none"):
    raise ConfigError(f"gram_normalize must be chw, hw or none, got {config.gram_normalize!r}")
  if config.histogram_method not in ("sort", "bins"):
    raise ConfigError(f"histogram_method must be sort or bins, got {config.histogram_method!r}")
  for name in ("content_weight", "style_weight", "histogram_weight", "tv_weight"):
    if not getattr(config, name) >= 0:  # also refuses NaN
      raise ConfigError(f"{name} must be non-negative, got {getattr(config, name)}")
  if not 0 <= config.slack < 1:
    raise ConfigError(f"slack must be in [0, 1), got {config.slack}")


@jax.jit
def _histogram_target(f):
  return losses.histogram_target(f)


def synthesize(content: Optional[np.ndarray], styles: Sequence[np.ndarray], config: HistogramConfig,
               loss_net: vgg.LossNet, *, style_weights: Optional[Sequence[float]] = None,
               masks: Optional[Sequence[np.ndarray]] = None, init: Optional[str] = None,
               optimizer: str = "lbfgs", learning_rate: Optional[float] = None, steps: int = 200,
               progress: optimize.Progress = None, seed: int = 0,
               size: Optional[int] = None) -> np.ndarray:
  """Texture synthesis (`content=None`) or style transfer with Gram + histogram losses.

  Args:
    content: `[H, W, 3]` in [0, 1], or None to synthesise a texture.
    styles: `[h, w, 3]` style/texture images in [0, 1] (several are blended by `style_weights`).
    config: loss composition and pyramid.
    loss_net: VGG features.
    style_weights: blend weights, one per style (normalised).
    masks: one `[H, W]` mask per style (localised style losses; needs content).
    init: 'content', 'noise' or an image path; default 'noise' for textures, 'content' otherwise.
    optimizer, learning_rate, steps: see `jaxstyle.optimize` (steps per pyramid level).
    progress: `progress(step, loss)` callback.
    seed: noise seed.
    size: texture long side (default: the first style's).

  Returns:
    float32 `[H, W, 3]` in [0, 1].
  """
  _check_config(config, loss_net)
  styles, blend, masks, hw = optimize.check_inputs(content, styles, style_weights, masks, size)
  spec = optimize.make_optimizer(optimizer, learning_rate, config.lbfgs_memory)
  loss_net = loss_net.replace_options(pooling=config.pooling)
  init = init or ("noise" if content is None else "content")
  x0 = optimize.initial_image(init, content, hw, seed)
  objective = HistogramObjective(
      content_layers=tuple(config.content_layers),
      content_layer_weights=optimize.layer_weights(config.content_layers,
                                                   config.content_layer_weights, "content"),
      style_layers=tuple(config.style_layers),
      style_layer_weights=optimize.layer_weights(config.style_layers, config.style_layer_weights,
                                                 "style"),
      histogram_layers=tuple(config.histogram_layers),
      histogram_layer_weights=optimize.layer_weights(
          config.histogram_layers, config.histogram_layer_weights, "histogram"),
      content_weight=float(config.content_weight), style_weight=float(config.style_weight),
      histogram_weight=float(config.histogram_weight), tv_weight=float(config.tv_weight),
      gram_normalize=config.gram_normalize, histogram_method=config.histogram_method,
      num_styles=len(styles), has_content=content is not None, masked=masks is not None)

  def build(shape, level):
    del level
    factor = shape[0] / hw[0]
    optimize.check_size(shape, objective.layers(), loss_net.depth)
    args = {"net": loss_net, "blend": jnp.asarray(blend, jnp.float32), "content": None,
            "masks": None}
    if content is not None:
      args["content"] = optimize.features(loss_net, image_lib.resize(content, shape),
                                          objective.content_layers)
    layers = tuple(dict.fromkeys(objective.style_layers + objective.histogram_layers))
    scaled = [optimize.scale_image(s, factor) for s in styles]
    optimize.check_styles(scaled, layers, loss_net.depth)
    style_feats = [optimize.features(loss_net, s, layers) for s in scaled]
    args["grams"] = {l: jnp.concatenate([losses.gram_matrix(f[l], config.gram_normalize)
                                         for f in style_feats]) for l in objective.style_layers}
    args["hists"] = {l: [_histogram_target(f[l]) for f in style_feats]
                     for l in objective.histogram_layers}
    if masks is not None:
      args["masks"] = jnp.stack([image_lib.resize(m, shape) for m in masks])
    args["scale"] = _loss_scales(args, style_feats, objective.histogram_layers,
                                 config.normalize_layers)
    return objective, args

  result = optimize.optimize_pyramid(build, x0, hw, scales=config.scales, steps=steps,
                                     optimizer=spec, progress=progress, slack=config.slack)
  return np.asarray(result, np.float32)


def _loss_scales(args, style_feats, histogram_layers, normalize: bool):
  """Per-layer loss divisors: the targets' mean squares (1 when not normalising)."""
  def mean_square(t, axes=None):
    if not normalize:
      return jnp.ones(t.shape[:1] if axes else (), jnp.float32)
    return jnp.maximum(jnp.mean(jnp.square(t), axis=axes), 1e-12)

  return {
      "content": {l: mean_square(f) for l, f in (args["content"] or {}).items()},
      "style": {l: mean_square(g, (1, 2)) for l, g in args["grams"].items()},
      "hist": {l: jnp.stack([mean_square(f[l]) for f in style_feats]) for l in histogram_layers},
  }


def run_stylize(request: api.StylizeRequest) -> np.ndarray:
  """Launcher entry point (see `jaxstyle.api`). Colour preservation is a Gatys feature only."""
  if request.preserve_color != "none":
    raise ConfigError("--preserve_color is supported by --method=gatys only")
  if request.alpha != 1.0:
    raise ConfigError("histogram takes no --alpha: balance the terms with --set style_weight=..., "
                      "histogram_weight=..., content_weight=...")
  config = api.apply_overrides(HistogramConfig(), request.overrides)
  loss_net = vgg.load_loss_net(request.weights, pooling=config.pooling)
  init = request.init if request.content is not None or request.init != "content" else None
  return synthesize(request.content, request.styles, config, loss_net,
                    style_weights=request.style_weights, masks=request.masks, init=init,
                    optimizer=request.optimizer, learning_rate=request.learning_rate,
                    steps=request.steps, progress=request.progress, seed=request.seed,
                    size=request.size)
