"""Stylizing with a trained Johnson network: `load`, `stylize` and the launcher's `run_stylize`.

`--checkpoint` is a training workdir, or a model file released or trained by pytorch/examples
fast_neural_style (`candy.pth`, `mosaic.pth`, ...), which `load_released` converts.
"""
import functools
import os
from typing import Any, Callable, Tuple

import jax.numpy as jnp
import numpy as np

from jaxstyle import api
from jaxstyle import image
from jaxstyle import tiling
from jaxstyle import xla_options
from jaxstyle.errors import ConfigError
from jaxstyle.methods.johnson.model import JohnsonConfig
from jaxstyle.methods.johnson.model import TransformerNet
from jaxstyle.train import checkpoint

METHOD = "johnson"
TILING = True  # --tile: its instance norms take fixed statistics (jaxstyle.tiling)


def config_from_dict(d: dict) -> JohnsonConfig:
  """Rebuilds a JohnsonConfig from `config.json` (unknown keys rejected)."""
  return api.config_from_dict(JohnsonConfig, d)


def load(workdir: str) -> Tuple[TransformerNet, Any, JohnsonConfig]:
  """Loads a trained model from a training workdir.

  Returns:
    (model, params, config).
  Raises:
    CheckpointError: the workdir holds no Johnson checkpoint.
  """
  config = config_from_dict(checkpoint.load_method_config(workdir, METHOD)["model"])
  params = checkpoint.load_params(workdir)
  return TransformerNet(config), params, config


def load_released(path: str) -> Tuple[TransformerNet, Any, JohnsonConfig]:
  """(model, params, config) of a pytorch/examples fast_neural_style `.pth` (RGB 0-255, linear
  output); its widths and residual-block count are read off the file."""
  # Imported here: pretrained/ imports jaxstyle for the model tables.
  from pretrained import released_pth, torchvision_pth  # pylint: disable=g-import-not-at-top
  params, config = released_pth.convert_johnson(torchvision_pth.load_state_dict(path), path)
  return TransformerNet(config), params, config


def load_any(checkpoint_path: str) -> Tuple[TransformerNet, Any, JohnsonConfig]:
  """`load_released` for a file, `load` for a training workdir."""
  if os.path.isfile(checkpoint_path):
    return load_released(checkpoint_path)
  return load(checkpoint_path)


@functools.partial(xla_options.jit, cpu_options=xla_options.SMALL_DOTS, static_argnames=("model",))
def _apply(model, params, x):
  return model.apply({"params": params}, x)


def stylize(model: TransformerNet, params: Any, content01: np.ndarray, *,
            preserve_color: str = "none", tile: int = 0, tile_margin: int = tiling.DEFAULT_MARGIN,
            tile_thumbnail: int = 0) -> np.ndarray:
  """Stylizes one image [H, W, 3] in [0, 1] -> [H, W, 3] in [0, 1].

  Odd sizes are reflect-padded to a multiple of 4 (the network downsamples twice) and cropped back.
  `preserve_color='luminance'` keeps the content's chrominance (Gatys et al. 2017 colour control).
  `tile` > 0 runs an image larger than that in `tile`-sized windows (`jaxstyle.tiling`).
  """
  content01 = np.asarray(content01, np.float32)
  h, w = content01.shape[:2]
  ph, pw = (-h) % 4, (-w) % 4
  x = np.pad(content01, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 4 else "edge")
  if tile and max(x.shape[:2]) > tile:
    out = tiling.apply_tiled(model, params, x, tile=tile, margin=tile_margin,
                             thumbnail=tile_thumbnail)[:h, :w]
  else:
    out = np.asarray(_apply(model, params, jnp.asarray(x)[None]))[0, :h, :w]
  out = np.clip(out, 0.0, 1.0)
  if preserve_color == "luminance":
    out = np.asarray(image.luminance_transfer(content01, out), np.float32)
  elif preserve_color != "none":
    raise ConfigError(f"johnson supports --preserve_color=none|luminance, got {preserve_color}")
  return out


def make_stylizer(request: api.StylizeRequest) -> Callable[[np.ndarray], np.ndarray]:
  """`launch/stylize.py --method=johnson --checkpoint=<workdir or .pth>` (the style is baked in):
  checks the request and loads the model once; the result stylizes any content image."""
  _check_request(request)
  model, params, _ = load_any(request.checkpoint)
  return functools.partial(stylize, model, params, preserve_color=request.preserve_color,
                           **tiling.settings(request))


def export_onnx(request: api.StylizeRequest):
  """`launch/stylize.py --method=johnson --export_onnx=...`: the network as an ONNX ModelProto
  (`jaxstyle.export.networks.johnson`)."""
  # Imported here: export.networks imports the model modules of every exported method.
  from jaxstyle.export import networks  # pylint: disable=g-import-not-at-top
  _check_request(request)
  if request.preserve_color != "none":
    raise ConfigError("--preserve_color is applied outside the network and is not exported")
  _, params, config = load_any(request.checkpoint)
  return networks.johnson(params, config)


def _check_request(request: api.StylizeRequest):
  if request.checkpoint is None:
    raise ConfigError("johnson needs --checkpoint=<training workdir or fast_neural_style .pth>")
  if request.content is None:
    raise ConfigError("johnson needs a --content image")
  if request.masks:
    raise ConfigError("johnson has no spatial control: --mask is not supported")
  if request.style_index:
    raise ConfigError("johnson models hold one style: --style_index is not supported")
  if request.style_weights is not None and len(request.style_weights) > 1:
    raise ConfigError("johnson models hold one style: --style_weights is not supported")
  if request.alpha != 1.0:
    raise ConfigError("johnson fixes the content/style trade-off at training time: --alpha "
                      "is not supported (retrain with --set style_weight=...)")
  if request.style_size is not None:
    raise ConfigError("johnson fixes the brush size at training time: --style_size is not "
                      "supported")
  if request.overrides:
    raise ConfigError(f"johnson stylize takes no --set options, got {', '.join(request.overrides)}")


def run_stylize(request: api.StylizeRequest) -> np.ndarray:
  """`make_stylizer(request)` applied to `request.content`."""
  return make_stylizer(request)(request.content)


def grid_style_paths(request: api.StylizeRequest) -> list:
  """The style the checkpoint was trained on, shown by `--grid` (a --style image is not used).
  A released file does not record it."""
  if os.path.isfile(request.checkpoint):
    return []
  path = checkpoint.load_method_config(request.checkpoint, METHOD).get("style_path")
  return [path] if path else []
