"""Stylizing with a trained AdaIN decoder: `load`, `stylize` and the launcher's `run_stylize`.

User controls (the reference `test.lua` options): `alpha` (content-style trade-off on the features),
several styles with blend weights (the AdaIN targets are blended), `preserve_color` ('histogram':
CORAL colour transfer of each style image to the content first, the reference `-preserveColor`;
'luminance': keep the content's chrominance afterwards), and spatial control with one mask per
style.
"""
import dataclasses
import functools
import os
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import api
from jaxstyle import image
from jaxstyle import vgg
from jaxstyle import xla_options
from jaxstyle.errors import CheckpointError
from jaxstyle.errors import ConfigError
from jaxstyle.methods import controls
from jaxstyle.methods.adain.model import AdaINConfig
from jaxstyle.methods.adain.model import blend_targets
from jaxstyle.methods.adain.model import Decoder
from jaxstyle.methods.adain.model import downsample_mask
from jaxstyle.methods.adain.model import encode
from jaxstyle.methods.adain.model import ENCODER_LAYER
from jaxstyle.methods.adain.model import encoder_net
from jaxstyle.methods.adain.model import make_decoder
from jaxstyle.train import checkpoint

METHOD = "adain"
_STRIDE = 8  # relu4_1 is 8x smaller than the image
DEFAULT_WEIGHTS = "hed-vgg16"


@dataclasses.dataclass(frozen=True)
class AdaINModel:
  """The two halves of AdaIN at inference: frozen VGG encoder f and trained decoder g."""
  decoder: Decoder
  encoder: vgg.LossNet


def config_from_dict(d: dict) -> AdaINConfig:
  """Rebuilds a AdaINConfig from `config.json` (unknown keys rejected)."""
  return api.config_from_dict(AdaINConfig, d)


def load(workdir: str, *, loss_net: Optional[vgg.LossNet] = None
         ) -> Tuple[AdaINModel, Any, AdaINConfig]:
  """Loads a trained AdaIN model from a training workdir.

  Args:
    workdir: the `--workdir` of `launch/train.py --method=adain`.
    loss_net: the encoder weights; default: load the ones the model was trained with.

  Returns:
    (model, decoder params, config).

  Raises:
    CheckpointError: the workdir holds no AdaIN checkpoint.
  """
  info = checkpoint.load_method_config(workdir, METHOD, key="config")
  config = config_from_dict(info["config"])
  if loss_net is None:
    loss_net = vgg.load_loss_net(info.get("weights", DEFAULT_WEIGHTS))
  if loss_net.depth != info.get("depth", loss_net.depth):
    raise CheckpointError(f"{workdir} was trained with a VGG{info['depth']} encoder, "
                          f"got VGG{loss_net.depth}")
  params = checkpoint.load_params(workdir)
  model = AdaINModel(decoder=make_decoder(config, loss_net.depth),
                     encoder=encoder_net(loss_net, config))
  return model, params, config


def is_released_decoder(checkpoint_path: str) -> bool:
  """Whether `--checkpoint` names a pytorch-AdaIN decoder file rather than a training workdir."""
  return os.path.isfile(checkpoint_path) and checkpoint_path.endswith((".pth", ".pt"))


def load_released(decoder_path: str, weights: str) -> Tuple[AdaINModel, Any]:
  """The released pytorch-AdaIN model: `decoder.pth` with its encoder `vgg_normalised.pth`.

  Args:
    decoder_path: naoto0804/pytorch-AdaIN's `decoder.pth` (or a training snapshot `iter_N.pth`).
    weights: the encoder it was trained with, normally a path to `vgg_normalised.pth` (any VGG19
      weights load, but a decoder only inverts the encoder it was trained against).

  Returns:
    (model, decoder params), the reference architecture: reflection padding, AdaINConfig defaults.
  """
  # Imported here: pretrained/ imports jaxstyle for the layer tables.
  from pretrained import adain_pth, torchvision_pth  # pylint: disable=g-import-not-at-top
  if weights == DEFAULT_WEIGHTS:
    raise ConfigError(f"{decoder_path} is a pytorch-AdaIN decoder: pass the encoder it was "
                      "trained with, --weights=<path to vgg_normalised.pth>")
  loss_net = vgg.load_loss_net(weights)
  if loss_net.depth != 19:
    raise ConfigError(f"a pytorch-AdaIN decoder needs a VGG19 encoder; {weights} is VGG"
                      f"{loss_net.depth}")
  config = AdaINConfig()
  state_dict = torchvision_pth.load_state_dict(decoder_path)
  params = adain_pth.convert_decoder(state_dict, config.channels(), source=decoder_path)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  model = AdaINModel(decoder=make_decoder(config, 19), encoder=encoder_net(loss_net, config))
  return model, params


@functools.partial(xla_options.jit, cpu_options=xla_options.SMALL_DOTS)
def _encode(encoder: vgg.LossNet, x: jax.Array) -> jax.Array:
  return encode(encoder, x)[ENCODER_LAYER]


@functools.partial(xla_options.jit, cpu_options=xla_options.SMALL_DOTS,
                   static_argnames=("decoder",))
def _decode(decoder: Decoder, params: Any, t: jax.Array) -> jax.Array:
  return decoder.apply({"params": params}, t)


def encode_image(model: AdaINModel, image01: np.ndarray) -> jax.Array:
  """The encoder's `[1, h/8, w/8, C]` relu4_1 features of one `[h, w, 3]` image in [0, 1]."""
  return _encode(model.encoder, jnp.asarray(controls.pad_to(image01, _STRIDE))[None])


def stylize(model: AdaINModel, params: Any, content01: np.ndarray,
            styles01: Sequence[np.ndarray], *, style_weights: Optional[Sequence[float]] = None,
            alpha: float = 1.0, masks: Optional[Sequence[np.ndarray]] = None,
            preserve_color: str = "none", eps: float = 1e-5,
            style_codes: Optional[Sequence[jax.Array]] = None) -> np.ndarray:
  """Stylizes one image with one or several styles.

  Args:
    model: AdaINModel from `load`.
    params: decoder parameters.
    content01: `[H, W, 3]` in [0, 1].
    styles01: style images `[h_i, w_i, 3]` in [0, 1] (any sizes).
    style_weights: blend weights (normalised; default equal).
    alpha: 0 = decoder(f(c)) (reconstruction), 1 = full style.
    masks: optional `[H, W]` region per style (spatial control).
    preserve_color: 'none', 'histogram' (colour-match the styles to the content first) or
      'luminance' (keep the content's chrominance).
    eps: AdaIN variance epsilon.
    style_codes: each style's relu4_1 features (`encode_image`), when already computed.

  Returns:
    `[H, W, 3]` float32 in [0, 1].
  """
  content01, styles01, weights = controls.prepare(
      METHOD, content01, styles01, style_weights=style_weights, alpha=alpha, masks=masks,
      preserve_color=preserve_color)

  controls.check_codes(style_codes, styles01, preserve_color)
  h, w = content01.shape[:2]
  f_c = encode_image(model, content01)
  f_s = [encode_image(model, s) for s in styles01] if style_codes is None else style_codes
  feature_masks = None
  if masks is not None:
    regions = controls.pad_to(np.moveaxis(controls.region_weights(masks, weights), 0, -1), _STRIDE)
    feature_masks = [downsample_mask(jnp.asarray(regions[None, ..., i]), _STRIDE)
                     for i in range(len(styles01))]
  t = blend_targets(f_c, f_s, weights, alpha, feature_masks, eps)
  out = np.clip(np.asarray(_decode(model.decoder, params, t))[0, :h, :w], 0.0, 1.0)
  if preserve_color == "luminance":
    out = np.asarray(image.luminance_transfer(content01, out), np.float32)
  return out


def make_stylizer(request: api.StylizeRequest) -> Callable[[np.ndarray], np.ndarray]:
  """`launch/stylize.py --method=adain --checkpoint=<workdir or pytorch-AdaIN decoder.pth>`:
  checks the request and loads the model once; the result stylizes any content image."""
  model, params, config = _load_request(request)
  return controls.request_stylizer(functools.partial(stylize, model, params), request,
                                   encode_style=functools.partial(encode_image, model),
                                   eps=config.eps)


def export_onnx(request: api.StylizeRequest):
  """`launch/stylize.py --method=adain --export_onnx=...`: encoder, AdaIN and decoder as an ONNX
  ModelProto that takes any style image (`jaxstyle.export.networks.adain`); --alpha becomes the
  default of its `alpha` input."""
  # Imported here: export.networks imports the model modules of every exported method.
  from jaxstyle.export import networks  # pylint: disable=g-import-not-at-top
  if len(request.styles) != 1:
    raise ConfigError("the AdaIN ONNX graph takes one style image at run time: pass one --style")
  if request.masks or request.preserve_color != "none":
    raise ConfigError("--mask and --preserve_color act outside the AdaIN network and are not "
                      "exported")
  model, params, config = _load_request(request)
  return networks.adain(params, config, model.encoder, alpha=request.alpha)


def _load_request(request: api.StylizeRequest) -> Tuple[AdaINModel, Any, AdaINConfig]:
  """Checks the request; (model, decoder params, config with the request's eps)."""
  if request.checkpoint is None:
    raise ConfigError("adain needs --checkpoint=<training workdir or pytorch-AdaIN decoder.pth>")
  if request.content is None:
    raise ConfigError("adain needs a --content image")
  if request.style_index:
    raise ConfigError("adain takes style images, not --style_index")
  unknown = set(request.overrides) - {"eps"}
  if unknown:
    raise ConfigError(f"adain stylize only takes --set eps=..., got {', '.join(sorted(unknown))}")
  eps = api.apply_overrides(AdaINConfig(), request.overrides).eps
  if not eps > 0 or not np.isfinite(eps):
    raise ConfigError(f"setting 'eps' must be a positive number, got {eps}")
  if is_released_decoder(request.checkpoint):
    model, params = load_released(request.checkpoint, request.weights)
    config = AdaINConfig(eps=eps)
  else:
    model, params, config = load(request.checkpoint)
    saved = checkpoint.load_config(request.checkpoint)
    trained_with = (saved.get("config") or {}).get("weights", DEFAULT_WEIGHTS)
    if request.weights not in (DEFAULT_WEIGHTS, trained_with):
      raise ConfigError(f"{request.checkpoint} was trained with --weights={trained_with}, "
                        f"not {request.weights}")
    config = dataclasses.replace(config, eps=eps)
  return model, params, config


def run_stylize(request: api.StylizeRequest) -> np.ndarray:
  """`make_stylizer(request)` applied to `request.content`."""
  return make_stylizer(request)(request.content)
