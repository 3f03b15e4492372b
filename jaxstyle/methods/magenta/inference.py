"""Stylizing with a trained arbitrary-style network: `load`, `stylize` and `run_stylize`.

Controls:
* several styles with weights: their embeddings are mixed (the reference's style mixing);
* `alpha`: identity interpolation, the embedding is `alpha * S(style) + (1 - alpha) * S(content)`
  (the reference `--interpolation_weights`); alpha = 0 stylizes the content with its own style;
* `preserve_color`: 'histogram' colour-matches each style image to the content first (as AdaIN's
  `-preserveColor`), 'luminance' keeps the content's chrominance afterwards;
* masks: one transformer pass per style and the outputs are blended per pixel with the masks. We
  blend outputs rather than embeddings: the conditional norms have one gamma/beta per image, so a
  per-pixel embedding would need spatial gamma/beta maps at every resolution, and output blending
  keeps each region exactly the single-style result.
"""
import dataclasses
import functools
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import api
from jaxstyle import image
from jaxstyle import vgg
from jaxstyle.errors import CheckpointError
from jaxstyle.errors import ConfigError
from jaxstyle.methods.magenta.model import ArbitraryStyleNet
from jaxstyle.methods.magenta.model import MagentaConfig
from jaxstyle.methods.magenta.model import pooled_features
from jaxstyle.methods.magenta.trainer import loss_net_for
from jaxstyle.train import checkpoint

METHOD = "magenta"
_MULTIPLE = 4  # the transformer downsamples twice
DEFAULT_WEIGHTS = "hed-vgg16"


@dataclasses.dataclass(frozen=True)
class MagentaModel:
  """The trained network plus the frozen VGG that feeds its style predictor."""
  net: ArbitraryStyleNet
  loss_net: vgg.LossNet


def config_from_dict(d: dict) -> MagentaConfig:
  """Rebuilds a MagentaConfig from `config.json` (unknown keys rejected)."""
  return api.config_from_dict(MagentaConfig, d)


def trained_weights(workdir: str) -> str:
  """The `--weights` a workdir's model was trained with."""
  return (checkpoint.load_config(workdir).get("config") or {}).get("weights", DEFAULT_WEIGHTS)


def load(workdir: str, *, loss_net: Optional[vgg.LossNet] = None
         ) -> Tuple[MagentaModel, Any, MagentaConfig]:
  """Loads a trained model from a training workdir.

  Args:
    workdir: the `--workdir` of `launch/train.py --method=magenta`.
    loss_net: the VGG weights; default: load the ones the model was trained with.

  Returns:
    (model, params, config).

  Raises:
    CheckpointError: the workdir holds no Magenta checkpoint.
  """
  saved = checkpoint.load_config(workdir)
  if saved.get("method") != METHOD:
    raise CheckpointError(f"{workdir} holds a {saved.get('method')!r} model, not {METHOD}")
  info = saved.get("config") or {}  # the loop stores `config_dict()` under "config"
  if "config" not in info:
    raise CheckpointError(f"{workdir}/config.json has no Magenta model settings")
  config = config_from_dict(info["config"])
  if loss_net is None:
    loss_net = vgg.load_loss_net(info.get("weights", DEFAULT_WEIGHTS))
  if loss_net.depth != info.get("depth", loss_net.depth):
    raise CheckpointError(f"{workdir} was trained with VGG{info['depth']} features, "
                          f"got VGG{loss_net.depth}")
  params = checkpoint.load_params(workdir)
  return MagentaModel(ArbitraryStyleNet(config), loss_net_for(loss_net, config)), params, config


@functools.partial(jax.jit, static_argnames=("net", "layers"))
def _embed(net, params, loss_net, x01, layers):
  feats = loss_net.features(x01, layers)
  return net.apply({"params": params}, pooled_features(feats, layers), method="embed")


@functools.partial(jax.jit, static_argnames=("net",))
def _transform(net, params, content01, embedding):
  return net.apply({"params": params}, content01, embedding, method="transform")


def embed(model: MagentaModel, params: Any, image01: np.ndarray) -> jax.Array:
  """The style embedding `[1, bottleneck]` of one image `[H, W, 3]` in [0, 1]."""
  layers = tuple(model.net.config.predictor_layers)
  return _embed(model.net, params, model.loss_net, jnp.asarray(image01, jnp.float32)[None], layers)


def region_weights(masks: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
  """Per-style pixel weights `[N, H, W]` summing to 1: overlapping masks are normalised, and what
  no mask covers takes the global blend `weights`."""
  m = np.clip(np.stack([np.asarray(x, np.float32) for x in masks]), 0.0, 1.0)
  total = m.sum(0)
  uncovered = np.clip(1.0 - total, 0.0, 1.0)
  return m / np.maximum(total, 1.0) + uncovered * np.asarray(weights, np.float32)[:, None, None]


def _check_inputs(content01, styles01, style_weights, masks):
  if content01 is None:
    raise ConfigError("magenta needs a content image")
  if not styles01:
    raise ConfigError("magenta needs at least one style image")
  n = len(styles01)
  style_weights = [1.0 / n] * n if style_weights is None else list(style_weights)
  if len(style_weights) != n:
    raise ConfigError(f"{len(style_weights)} style weights for {n} styles")
  if any(w < 0 for w in style_weights) or sum(style_weights) <= 0:
    raise ConfigError("style weights must be non-negative and not all zero")
  if masks is not None:
    if len(masks) != n:
      raise ConfigError(f"{len(masks)} masks for {n} styles")
    for m in masks:
      if np.shape(m) != tuple(content01.shape[:2]):
        raise ConfigError(f"mask shape {np.shape(m)} differs from the content's "
                          f"{tuple(content01.shape[:2])}")
  return [w / sum(style_weights) for w in style_weights]


def stylize(model: MagentaModel, params: Any, content01: np.ndarray,
            styles01: Sequence[np.ndarray], *, style_weights: Optional[Sequence[float]] = None,
            alpha: float = 1.0, masks: Optional[Sequence[np.ndarray]] = None,
            preserve_color: str = "none") -> np.ndarray:
  """Stylizes one image with one or several styles.

  Args:
    model: MagentaModel from `load`.
    params: network parameters.
    content01: `[H, W, 3]` in [0, 1].
    styles01: style images `[h_i, w_i, 3]` in [0, 1] (the paper uses 256 px styles).
    style_weights: embedding mixing weights (normalised; default equal).
    alpha: identity interpolation: 0 = the content's own embedding, 1 = the style's.
    masks: optional `[H, W]` region per style (spatial control by output blending).
    preserve_color: 'none', 'histogram' or 'luminance'.

  Returns:
    `[H, W, 3]` float32 in [0, 1].
  """
  content01 = np.asarray(content01, np.float32)
  weights = _check_inputs(content01, styles01, style_weights, masks)
  if not 0.0 <= alpha <= 1.0:
    raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
  if preserve_color not in ("none", "histogram", "luminance"):
    raise ConfigError(f"unknown preserve_color {preserve_color!r}")
  styles01 = [np.asarray(s, np.float32) for s in styles01]
  if preserve_color == "histogram":
    styles01 = [np.asarray(image.match_color(s, content01), np.float32) for s in styles01]

  h, w = content01.shape[:2]
  pads = ((0, (-h) % _MULTIPLE), (0, (-w) % _MULTIPLE), (0, 0))
  padded = jnp.asarray(np.pad(content01, pads, mode="reflect" if min(h, w) > 4 else "edge"))[None]
  identity = embed(model, params, content01) if alpha < 1.0 else 0.0
  embeddings = [alpha * embed(model, params, s) + (1.0 - alpha) * identity for s in styles01]

  def run(e):
    return np.asarray(_transform(model.net, params, padded, e))[0, :h, :w]

  if masks is None:
    out = run(sum(wi * e for wi, e in zip(weights, embeddings)))
  else:
    regions = region_weights(masks, weights)
    out = sum(r[..., None] * run(e) for r, e in zip(regions, embeddings) if r.any())
  out = np.clip(out, 0.0, 1.0).astype(np.float32)
  if preserve_color == "luminance":
    out = np.asarray(image.luminance_transfer(content01, out), np.float32)
  return out


def run_stylize(request: api.StylizeRequest) -> np.ndarray:
  """`launch/stylize.py --method=magenta --checkpoint=<workdir>`."""
  if request.checkpoint is None:
    raise ConfigError("magenta needs --checkpoint=<training workdir>")
  if request.content is None:
    raise ConfigError("magenta needs a --content image")
  if request.style_index:
    raise ConfigError("magenta takes style images, not --style_index")
  if request.overrides:
    raise ConfigError(f"magenta stylize takes no --set options, got "
                      f"{', '.join(sorted(request.overrides))}")
  trained_with = trained_weights(request.checkpoint)
  if request.weights not in (DEFAULT_WEIGHTS, trained_with):
    raise ConfigError(f"{request.checkpoint} was trained with --weights={trained_with}, "
                      f"not {request.weights}")
  model, params, _ = load(request.checkpoint)
  out = stylize(model, params, request.content, request.styles,
                style_weights=request.style_weights, alpha=request.alpha, masks=request.masks,
                preserve_color=request.preserve_color)
  if request.progress is not None:
    request.progress(1, 0.0)
  return out
