"""Gatys et al., "Image Style Transfer Using Convolutional Neural Networks" (CVPR 2016), with the
controls of Gatys et al., "Controlling Perceptual Factors in Neural Style Transfer" (CVPR 2017):
style interpolation, spatial control by masks and colour preservation.

The stylized image is optimised directly (L-BFGS or Adam, `jaxstyle.optimize`) to match the content
image's VGG features at the content layers and the style images' Gram matrices at the style layers.
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

COLOR_MODES = ("none", "luminance", "histogram")


@dataclasses.dataclass(frozen=True)
class GatysConfig:
  """Loss composition: layers from Gatys et al. / jcjohnson/neural-style (content relu4_2, style
  relu1_1..relu5_1, equal layer weights) on VGG16.

  Raw feature scales differ wildly between weight sets: in the default HED VGG16 (fine-tuned for
  edges) the Gram loss at relu5_1 is ~1e-6 of relu1_1's, so neural-style's raw weights (content 5,
  style 100, TV 1e-3) gave a blurred, content-less result. With `normalize_layers` (default) every
  layer's loss is divided by its target's mean square (content: features, style: Gram entries), so
  each layer starts near 1 whatever the network, and the weights below are relative: style 10 x
  content 1 gives a clearly stylised image from a content start in ~200 L-BFGS steps.

  Attributes:
    content_layers / content_layer_weights: where content is matched (one weight per layer, or one
      weight for all).
    style_layers / style_layer_weights: where Gram matrices are matched.
    content_weight, style_weight, tv_weight: loss term weights (TV: mean squared neighbour
      differences of the [0, 1] image).
    normalize_layers: divide each layer's loss by its target's mean square (see above).
    gram_normalize: 'chw' (divide by C*H*W), 'hw' or 'none'.
    scales: coarse-to-fine pyramid levels (1 = optimise at full size only).
    pooling: loss network pooling, 'max' or 'avg' (the paper prefers avg).
    lbfgs_memory: curvature pairs L-BFGS keeps (memory: 2 images' worth per pair).
    slack: pixel-range slack of the optimiser's sigmoid box (see `jaxstyle.optimize`).
  """
  content_layers: Tuple[str, ...] = ("relu4_2",)
  content_layer_weights: Tuple[float, ...] = (1.0,)
  style_layers: Tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
  style_layer_weights: Tuple[float, ...] = (1.0,)
  content_weight: float = 1.0
  style_weight: float = 10.0
  tv_weight: float = 1.0
  normalize_layers: bool = True
  gram_normalize: str = "chw"
  scales: int = 1
  pooling: str = "max"
  slack: float = optimize.DEFAULT_SLACK
  lbfgs_memory: int = 20          # L-BFGS curvature pairs (neural-style-pt keeps 100)


@dataclasses.dataclass(frozen=True)
class GatysObjective:
  """Hashable loss: static layer lists and weights; targets, masks and blend weights come in `args`.

  `args` = {'net': LossNet, 'content': {layer: [1, h, w, C]} or None,
            'grams': {layer: [S, C, C]}, 'blend': [S], 'masks': [S, H, W] or None,
            'scale': {layer: [] content / [S] style loss divisors}}.
  """
  content_layers: Tuple[str, ...]
  content_layer_weights: Tuple[float, ...]
  style_layers: Tuple[str, ...]
  style_layer_weights: Tuple[float, ...]
  content_weight: float
  style_weight: float
  tv_weight: float
  gram_normalize: str
  num_styles: int
  has_content: bool
  masked: bool

  def layers(self) -> Tuple[str, ...]:
    content = self.content_layers if self.has_content else ()
    return tuple(dict.fromkeys(content + self.style_layers))

  def __call__(self, x: jax.Array, args) -> jax.Array:
    feats = args["net"].features(x[None], self.layers())
    loss = jnp.float32(0.0)
    if self.has_content:
      for layer, w in zip(self.content_layers, self.content_layer_weights):
        term = losses.content_loss(feats[layer], args["content"][layer])
        loss += self.content_weight * w * term / args["scale"]["content"][layer]
    for layer, w in zip(self.style_layers, self.style_layer_weights):
      f = feats[layer]
      for s in range(self.num_styles):
        mask = None
        if self.masked:
          mask = losses.resize_mask(args["masks"][s], f.shape[1:3])[None]
        term = losses.gram_loss(f, args["grams"][layer][s], self.gram_normalize, mask)
        term = term / args["scale"]["style"][layer][s]
        loss += self.style_weight * w * args["blend"][s] * term
    if self.tv_weight:
      loss += self.tv_weight * losses.total_variation(x, "l2", "mean")
    return loss


def _objective(config: GatysConfig, *, num_styles, has_content, masked, alpha) -> GatysObjective:
  return GatysObjective(
      content_layers=tuple(config.content_layers),
      content_layer_weights=optimize.layer_weights(config.content_layers,
                                                  config.content_layer_weights, "content"),
      style_layers=tuple(config.style_layers),
      style_layer_weights=optimize.layer_weights(config.style_layers, config.style_layer_weights,
                                                "style"),
      content_weight=float(config.content_weight), style_weight=float(config.style_weight) * alpha,
      tv_weight=float(config.tv_weight), gram_normalize=config.gram_normalize,
      num_styles=num_styles, has_content=has_content, masked=masked)


def _check_config(config: GatysConfig, loss_net: vgg.LossNet):
  vgg.check_layers(config.content_layers, loss_net.depth)
  vgg.check_layers(config.style_layers, loss_net.depth)
  if config.gram_normalize not in ("chw", "hw", "none"):
    raise ConfigError(f"gram_normalize must be chw, hw or none, got {config.gram_normalize!r}")
  for name in ("content_weight", "style_weight", "tv_weight"):
    if not getattr(config, name) >= 0:  # also refuses NaN
      raise ConfigError(f"{name} must be non-negative, got {getattr(config, name)}")
  if not 0 <= config.slack < 1:
    raise ConfigError(f"slack must be in [0, 1), got {config.slack}")
  if config.scales < 1:
    raise ConfigError(f"scales must be at least 1, got {config.scales}")


def stylize(content: Optional[np.ndarray], styles: Sequence[np.ndarray], config: GatysConfig,
            loss_net: vgg.LossNet, *, style_weights: Optional[Sequence[float]] = None,
            masks: Optional[Sequence[np.ndarray]] = None, init: str = "content",
            optimizer: str = "lbfgs", learning_rate: Optional[float] = None, steps: int = 200,
            preserve_color: str = "none", progress: optimize.Progress = None, seed: int = 0,
            alpha: float = 1.0, size: Optional[int] = None) -> np.ndarray:
  """Stylizes `content` with one or more `styles` by optimisation.

  Args:
    content: `[H, W, 3]` in [0, 1], or None for texture synthesis (no content loss).
    styles: `[h, w, 3]` images in [0, 1]; with several, their style losses are blended.
    config: loss composition.
    loss_net: VGG features (`jaxstyle.vgg.LossNet`).
    style_weights: one blend weight per style (normalised to sum to 1); default equal.
    masks: one `[H, W]` mask per style: style i is matched only where mask i is bright (its Gram is
      taken over the masked output features). Blend weights then scale each region's style strength.
    init: 'content', 'noise' or a path to an image.
    optimizer, learning_rate, steps: see `jaxstyle.optimize` (steps per pyramid level).
    preserve_color: 'none'; 'luminance' (transfer on luminance only, content chrominance kept);
      'histogram' (the styles are recoloured to the content's colour statistics first).
    progress: `progress(step, loss)` callback.
    seed: noise initialisation seed.
    alpha: 0..1 multiplier of the style weight (1 = full style, 0 = reconstructs the content).
    size: output long side for texture synthesis (default: the first style's size).

  Returns:
    float32 `[H, W, 3]` in [0, 1].
  """
  _check_config(config, loss_net)
  styles, blend, masks, hw = optimize.check_inputs(content, styles, style_weights, masks, size)
  if preserve_color not in COLOR_MODES:
    raise ConfigError(f"unknown preserve_color {preserve_color!r}; choose one of "
                      f"{', '.join(COLOR_MODES)}")
  if preserve_color != "none" and content is None:
    raise ConfigError("preserve_color needs a content image")
  if not 0.0 <= alpha <= 1.0:
    raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
  spec = optimize.make_optimizer(optimizer, learning_rate, config.lbfgs_memory)
  loss_net = loss_net.replace_options(pooling=config.pooling)

  if preserve_color == "histogram":
    styles = [image_lib.match_color(s, content) for s in styles]
  original = content
  if preserve_color == "luminance":
    content, styles = _luminance_problem(content, styles)
  x0 = optimize.initial_image(init, content, hw, seed)
  if preserve_color == "luminance" and init != "content":
    x0 = _gray3(image_lib.rgb_to_yuv(x0)[..., 0])

  objective = _objective(config, num_styles=len(styles), has_content=content is not None,
                         masked=masks is not None, alpha=alpha)

  def build(shape, level):
    del level
    factor = shape[0] / hw[0]
    optimize.check_size(shape, objective.layers(), loss_net.depth)
    net_args = {"net": loss_net, "blend": jnp.asarray(blend, jnp.float32), "content": None,
                "masks": None}
    if content is not None:
      c = image_lib.resize(content, shape)
      net_args["content"] = optimize.features(loss_net, c, objective.content_layers)
    scaled = [optimize.scale_image(s, factor) for s in styles]
    optimize.check_styles(scaled, objective.style_layers, loss_net.depth)
    grams = [optimize.grams(loss_net, s, objective.style_layers, config.gram_normalize)
             for s in scaled]
    net_args["grams"] = {l: jnp.concatenate([g[l] for g in grams]) for l in objective.style_layers}
    net_args["scale"] = _loss_scales(net_args, config.normalize_layers)
    if masks is not None:
      net_args["masks"] = jnp.stack([image_lib.resize(m, shape) for m in masks])
    return objective, net_args

  result = optimize.optimize_pyramid(build, x0, hw, scales=config.scales, steps=steps,
                                     optimizer=spec, progress=progress, slack=config.slack)
  if preserve_color == "luminance":
    result = image_lib.luminance_transfer(original, result)
  return np.asarray(result, np.float32)


def _loss_scales(args, normalize: bool):
  """Per-layer loss divisors: the targets' mean squares (1 when not normalising)."""
  def mean_square(t, axes):
    if not normalize:
      return jnp.ones(t.shape[:1] if axes else (), jnp.float32)
    return jnp.maximum(jnp.mean(jnp.square(t), axis=axes), 1e-12)

  return {"content": {l: mean_square(f, None) for l, f in (args["content"] or {}).items()},
          "style": {l: mean_square(g, (1, 2)) for l, g in args["grams"].items()}}


def _gray3(y):
  return np.repeat(np.clip(np.asarray(y, np.float32), 0, 1)[..., None], 3, axis=-1)


def _luminance_problem(content, styles):
  """Gatys et al. 2017, luminance-only transfer: content and styles become grey luminance images,
  each style's luminance matched to the content's mean and spread first."""
  y_c = image_lib.rgb_to_yuv(content)[..., 0]
  out = []
  for s in styles:
    y_s = image_lib.rgb_to_yuv(s)[..., 0]
    y_s = (y_s - y_s.mean()) / max(float(y_s.std()), 1e-6) * y_c.std() + y_c.mean()
    out.append(_gray3(y_s))
  return _gray3(y_c), out


def run_stylize(request: api.StylizeRequest) -> np.ndarray:
  """Launcher entry point (see `jaxstyle.api`)."""
  config = api.apply_overrides(GatysConfig(), request.overrides)
  loss_net = vgg.load_loss_net(request.weights, pooling=config.pooling)
  return stylize(request.content, request.styles, config, loss_net,
                 style_weights=request.style_weights, masks=request.masks, init=request.init,
                 optimizer=request.optimizer, learning_rate=request.learning_rate,
                 steps=request.steps, preserve_color=request.preserve_color,
                 progress=request.progress, seed=request.seed, alpha=request.alpha,
                 size=request.size)
