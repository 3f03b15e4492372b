"""Stylizing with a trained MSG-Net: `load`, `style_gram`, `stylize` and `run_stylize`.

Any style image works at run time: its Siamese-encoder Gram sets the CoMatch target (quality is best
for the styles seen in training). Brush size follows the size the style image is encoded at, and
several styles blend by mixing their Grams linearly.

`--checkpoint` is a training workdir, or a model file of PyTorch-Multi-Style-Transfer (the released
`21styles.model`, or a `main.py train` snapshot), which `load_released` converts.
"""
import functools
import os
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import api
from jaxstyle import image
from jaxstyle import tiling
from jaxstyle.errors import ConfigError
from jaxstyle.methods.msgnet.model import MSGNet, MSGNetConfig
from jaxstyle.methods.msgnet.model import SIZE_MULTIPLE
from jaxstyle.train import checkpoint

METHOD = "msgnet"
TILING = True  # --tile: its instance norms take fixed statistics (jaxstyle.tiling)
COLOR_MODES = ("none", "luminance", "histogram")


def config_from_dict(d: dict) -> MSGNetConfig:
  """Rebuilds a MSGNetConfig from `config.json` (unknown keys rejected)."""
  return api.config_from_dict(MSGNetConfig, d)


def load_released(path: str) -> Tuple[MSGNet, Any, MSGNetConfig]:
  """(model, params, config) of a PyTorch-Multi-Style-Transfer model file (BGR 0-255, no output
  offset); its widths and block count are read off the file."""
  # Imported here: pretrained/ imports jaxstyle for the model tables.
  from pretrained import released_pth, torchvision_pth  # pylint: disable=g-import-not-at-top
  params, config = released_pth.convert_msgnet(torchvision_pth.load_state_dict(path), path)
  return MSGNet(config), params, config


def load_with_styles(workdir: str) -> Tuple[MSGNet, Any, MSGNetConfig, list]:
  """`load` plus the paths of the training styles (for `--style_index`); a released model file
  (`load_released`) records none."""
  if os.path.isfile(workdir):
    return (*load_released(workdir), [])
  info = checkpoint.load_method_config(workdir, METHOD)
  config = config_from_dict(info["model"])
  params = checkpoint.load_params(workdir)
  return MSGNet(config), params, config, list(info.get("styles") or [])


def load(workdir: str) -> Tuple[MSGNet, Any, MSGNetConfig]:
  """Loads a trained model from a training workdir (or a released file): (model, params, config).

  Raises:
    CheckpointError: the workdir holds no MSG-Net checkpoint.
  """
  return load_with_styles(workdir)[:3]


@functools.partial(jax.jit, static_argnames=("model",))
def _gram(model, params, style):
  return model.apply({"params": params}, style, method=MSGNet.style_gram)


@functools.partial(jax.jit, static_argnames=("model",))
def _apply(model, params, content, gram):
  return model.apply({"params": params}, content, gram)


def style_gram(model: MSGNet, params: Any, styles: Sequence[np.ndarray], *,
               style_weights: Optional[Sequence[float]] = None,
               style_size: Optional[int] = None) -> jax.Array:
  """The CoMatch target of one or several styles: `[1, C, C]`.

  Args:
    model, params: a trained MSGNet.
    styles: style images [h, w, 3] in [0, 1].
    style_weights: blend weight per style (normalised here); default equal weights.
    style_size: resize each style so its long side is this many pixels first (brush size:
      larger -> smaller strokes relative to the output). None keeps the given size.
  """
  if not len(styles):
    raise ConfigError("msgnet needs at least one style image")
  if style_weights is None:
    style_weights = [1.0] * len(styles)
  if len(style_weights) != len(styles):
    raise ConfigError(f"{len(style_weights)} style weights for {len(styles)} styles")
  w = np.asarray(style_weights, np.float64)
  if np.any(w < 0) or w.sum() <= 0:
    raise ConfigError("style weights must be non-negative and not all zero")
  w = w / w.sum()
  gram = 0.0
  for weight, style in zip(w, styles):
    style = np.asarray(style, np.float32)
    if style_size is not None:
      if style_size < 4:
        raise ConfigError(f"style size must be at least 4 px, got {style_size}")
      style = image.resize_long_side(style, style_size)
    gram = gram + float(weight) * _gram(model, params, jnp.asarray(style)[None])
  return gram


def stylize(model: MSGNet, params: Any, content01: np.ndarray, styles: Sequence[np.ndarray], *,
            style_weights: Optional[Sequence[float]] = None, style_size: Optional[int] = None,
            preserve_color: str = "none", **tile_settings) -> np.ndarray:
  """Stylizes one image [H, W, 3] in [0, 1] -> [H, W, 3] in [0, 1].

  Args:
    model, params: a trained MSGNet (from `load`).
    content01: the content image.
    styles: one or more style images (blended by `style_weights`).
    style_weights, style_size: see `style_gram`.
    preserve_color: 'luminance' keeps the content's chrominance; 'histogram' recolours each style
      to the content's colour statistics before encoding it (Gatys et al. 2017 colour control).
    **tile_settings: `tile`, `tile_margin`, `tile_thumbnail` (`jaxstyle.tiling`): a content
      larger than `tile` runs in windows.
  """
  _check_color(preserve_color)
  content01 = np.asarray(content01, np.float32)
  if preserve_color == "histogram":
    styles = [image.match_color(np.asarray(s, np.float32), content01) for s in styles]
  gram = style_gram(model, params, styles, style_weights=style_weights, style_size=style_size)
  return _stylize_gram(model, params, content01, gram=gram, preserve_color=preserve_color,
                       **tile_settings)


def _check_color(preserve_color: str):
  if preserve_color not in COLOR_MODES:
    raise ConfigError(f"msgnet supports --preserve_color={'|'.join(COLOR_MODES)}, "
                      f"got {preserve_color}")


def _stylize_gram(model: MSGNet, params: Any, content01: np.ndarray, *, gram: jax.Array,
                  preserve_color: str, tile: int = 0, tile_margin: int = tiling.DEFAULT_MARGIN,
                  tile_thumbnail: int = 0) -> np.ndarray:
  """`stylize` towards a style Gram already computed."""
  content01 = np.asarray(content01, np.float32)
  h, w = content01.shape[:2]
  if tile and max(h, w) > tile:
    x = np.pad(content01, ((0, -h % SIZE_MULTIPLE), (0, -w % SIZE_MULTIPLE), (0, 0)), "reflect")
    out = tiling.apply_tiled(model, params, x, gram, tile=tile, margin=tile_margin,
                             multiple=SIZE_MULTIPLE, thumbnail=tile_thumbnail)[:h, :w]
  else:
    out = np.asarray(_apply(model, params, jnp.asarray(content01)[None], gram))[0]
  out = np.clip(out, 0.0, 1.0)
  if preserve_color == "luminance":
    out = np.asarray(image.luminance_transfer(content01, out), np.float32)
  return out


def _training_styles(paths: Sequence[str], indices: Sequence[int], size: int):
  if not paths:
    raise ConfigError("this checkpoint records no training styles: pass --style instead of "
                      "--style_index")
  styles = []
  for i in indices:
    if not 0 <= i < len(paths):
      raise ConfigError(f"--style_index {i} out of range: the model was trained on "
                        f"{len(paths)} style(s) (0..{len(paths) - 1})")
    if paths[i] == "<sample>":
      styles.append(image.resize_long_side(image.sample_style(), size))
    else:
      styles.append(image.load_image(paths[i], size))
  return styles


def make_stylizer(request: api.StylizeRequest) -> Callable[[np.ndarray], np.ndarray]:
  """`launch/stylize.py --method=msgnet --checkpoint=<workdir or 21styles.model>`: checks the
  request and loads the model and styles once; the result stylizes any content image.

  Honours --style (any image; several blend with --style_weights), --style_index (the training
  styles by index, instead of --style), --style_size (brush size) and --preserve_color.
  """
  model, params, _, styles = _load_request(request)
  weights = request.style_weights
  if request.preserve_color == "histogram":  # the styles are recoloured to each content image
    return functools.partial(stylize, model, params, styles=styles, style_weights=weights,
                             style_size=request.style_size, preserve_color="histogram",
                             **tiling.settings(request))
  # One Gram for every content image: the style encoder runs once, not once per frame.
  gram = style_gram(model, params, styles, style_weights=weights, style_size=request.style_size)
  return functools.partial(_stylize_gram, model, params, gram=gram,
                           preserve_color=request.preserve_color, **tiling.settings(request))


def export_onnx(request: api.StylizeRequest):
  """`launch/stylize.py --method=msgnet --export_onnx=...`: the network with the request's style
  (Gram) folded in, as an ONNX ModelProto (`jaxstyle.export.networks.msgnet`)."""
  # Imported here: export.networks imports the model modules of every exported method.
  from jaxstyle.export import networks  # pylint: disable=g-import-not-at-top
  if request.preserve_color != "none":
    raise ConfigError("--preserve_color is applied outside the network and is not exported")
  model, params, config, styles = _load_request(request)
  gram = style_gram(model, params, styles, style_weights=request.style_weights,
                    style_size=request.style_size)
  return networks.msgnet(params, config, np.asarray(gram))


def _load_request(request: api.StylizeRequest):
  """Checks the request; (model, params, config, style images) of its checkpoint and styles."""
  if request.checkpoint is None:
    raise ConfigError("msgnet needs --checkpoint=<training workdir or 21styles.model>")
  if request.content is None:
    raise ConfigError("msgnet needs a --content image")
  if request.masks:
    raise ConfigError("msgnet has no spatial control: --mask is not supported")
  if request.alpha != 1.0:
    raise ConfigError("msgnet has no content/style trade-off at run time: --alpha is not "
                      "supported (use --style_size or retrain with --set style_weight=...)")
  if request.overrides:
    raise ConfigError(f"msgnet stylize takes no --set options, got {', '.join(request.overrides)}")
  _check_color(request.preserve_color)
  model, params, config, paths = load_with_styles(request.checkpoint)
  if request.style_index:
    styles = _training_styles(paths, request.style_index, request.style_size or request.size)
  else:
    styles = list(request.styles)
  weights = request.style_weights
  if weights is not None and len(weights) != len(styles):
    raise ConfigError(f"--style_weights has {len(weights)} values for {len(styles)} styles")
  return model, params, config, styles


def run_stylize(request: api.StylizeRequest) -> np.ndarray:
  """`make_stylizer(request)` applied to `request.content`."""
  return make_stylizer(request)(request.content)
