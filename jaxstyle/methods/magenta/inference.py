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
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import api
from jaxstyle import tiling
from jaxstyle import vgg
from jaxstyle import xla_options
from jaxstyle.errors import CheckpointError
from jaxstyle.errors import ConfigError
from jaxstyle.methods import controls
from jaxstyle.methods.magenta.model import ArbitraryStyleNet
from jaxstyle.methods.magenta.model import MagentaConfig
from jaxstyle.methods.magenta.model import pooled_features
from jaxstyle.methods.magenta.trainer import loss_net_for
from jaxstyle.train import checkpoint

METHOD = "magenta"
TILING = True  # --tile (trained models): fixed norm statistics (jaxstyle.tiling)
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
  info = checkpoint.load_method_config(workdir, METHOD, key="config")
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


@functools.partial(xla_options.jit, cpu_options=xla_options.SMALL_DOTS, static_argnames=("net",))
def _transform(net, params, content01, embedding):
  return net.apply({"params": params}, content01, embedding, method="transform")


def embed(model: MagentaModel, params: Any, image01: np.ndarray) -> jax.Array:
  """The style embedding `[1, bottleneck]` of one image `[H, W, 3]` in [0, 1]."""
  layers = tuple(model.net.config.predictor_layers)
  return _embed(model.net, params, model.loss_net, jnp.asarray(image01, jnp.float32)[None], layers)


def stylize(model: MagentaModel, params: Any, content01: np.ndarray,
            styles01: Sequence[np.ndarray], *, style_weights: Optional[Sequence[float]] = None,
            alpha: float = 1.0, masks: Optional[Sequence[np.ndarray]] = None,
            preserve_color: str = "none",
            style_codes: Optional[Sequence[jax.Array]] = None, tile: int = 0,
            tile_margin: int = tiling.DEFAULT_MARGIN, tile_thumbnail: int = 0) -> np.ndarray:
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
    style_codes: each style's `embed`ding, when already computed.
    tile, tile_margin, tile_thumbnail: a content larger than `tile` runs in windows
      (`jaxstyle.tiling`); its own embedding (alpha < 1) then comes from the thumbnail too.

  Returns:
    `[H, W, 3]` float32 in [0, 1].
  """
  def transform(x, e):
    if tile and max(x.shape[1:3]) > tile:
      return tiling.apply_tiled(model.net, params, x[0], e, tile=tile, margin=tile_margin,
                                multiple=_MULTIPLE, thumbnail=tile_thumbnail,
                                method="transform")[None]
    return _transform(model.net, params, jnp.asarray(x), e)

  return controls.stylize_with_embeddings(
      METHOD, content01, styles01, embed_fn=lambda x: embed(model, params, x),
      transform_fn=transform, multiple=_MULTIPLE, style_weights=style_weights, alpha=alpha,
      masks=masks, preserve_color=preserve_color, style_codes=style_codes,
      identity_size=(tile_thumbnail or tile) if tile else 0)


def check_request(request: api.StylizeRequest) -> None:
  """What every Magenta model (trained or published) needs from `launch/stylize.py`."""
  if request.content is None:
    raise ConfigError("magenta needs a --content image")
  if request.style_index:
    raise ConfigError("magenta takes style images, not --style_index")
  if request.overrides:
    raise ConfigError(f"magenta stylize takes no --set options, got "
                      f"{', '.join(sorted(request.overrides))}")


def make_stylizer(request: api.StylizeRequest) -> Callable[[np.ndarray], np.ndarray]:
  """`launch/stylize.py --method=magenta --checkpoint=<workdir>` (or `=published`): checks the
  request and loads the model once; the result stylizes any content image."""
  # The published TF-Lite weights live in `published`, imported here because it imports us.
  from jaxstyle.methods.magenta import published  # pylint: disable=g-import-not-at-top
  if published.is_published(request.checkpoint):
    return published.make_stylizer(request)
  if request.checkpoint is None:
    raise ConfigError("magenta needs --checkpoint=<training workdir> or --checkpoint=published")
  check_request(request)
  trained_with = trained_weights(request.checkpoint)
  if request.weights not in (DEFAULT_WEIGHTS, trained_with):
    raise ConfigError(f"{request.checkpoint} was trained with --weights={trained_with}, "
                      f"not {request.weights}")
  model, params, _ = load(request.checkpoint)
  return controls.request_stylizer(functools.partial(stylize, model, params), request,
                                   encode_style=functools.partial(embed, model, params),
                                   **tiling.settings(request))


def export_onnx(request: api.StylizeRequest):
  """`launch/stylize.py --method=magenta --checkpoint=<workdir> --export_onnx=...`: the trained
  model, style predictor included, as an ONNX ModelProto with `style` and `alpha` inputs
  (`jaxstyle.export.networks.magenta`). The published model is not exported."""
  # Imported here: export.networks imports the model modules of every exported method.
  from jaxstyle.export import networks  # pylint: disable=g-import-not-at-top
  from jaxstyle.methods.magenta import published  # pylint: disable=g-import-not-at-top
  if published.is_published(request.checkpoint):
    raise ConfigError("the published Magenta model is not exported (its style predictor is a "
                      "MobileNetV2); export a trained --checkpoint=<workdir>")
  if request.checkpoint is None:
    raise ConfigError("magenta needs --checkpoint=<training workdir>")
  check_request(request)
  if len(request.styles) != 1:
    raise ConfigError("the Magenta ONNX graph takes one style image at run time: pass one --style")
  if request.masks or request.preserve_color != "none":
    raise ConfigError("--mask and --preserve_color act outside the Magenta network and are not "
                      "exported")
  trained_with = trained_weights(request.checkpoint)
  if request.weights not in (DEFAULT_WEIGHTS, trained_with):
    raise ConfigError(f"{request.checkpoint} was trained with --weights={trained_with}, "
                      f"not {request.weights}")
  model, params, config = load(request.checkpoint)
  return networks.magenta(params, config, model.loss_net, alpha=request.alpha)


def run_stylize(request: api.StylizeRequest) -> np.ndarray:
  """`make_stylizer(request)` applied to `request.content`."""
  return make_stylizer(request)(request.content)
