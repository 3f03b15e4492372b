"""Stylizing with a trained StyleBank: one bank, linear fusion of banks, region fusion by masks."""
import functools
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import api
from jaxstyle import image
from jaxstyle.errors import ConfigError
from jaxstyle.methods.stylebank import checkpoints
from jaxstyle.methods.stylebank.checkpoints import load
from jaxstyle.methods.stylebank.model import StyleBankNet


@functools.partial(jax.jit, static_argnums=0)
def _fused(net: StyleBankNet, params, x01, weights):
  f = net.encode(params, x01)
  return net.decode(params, net.fuse_banks(params["banks"], f, weights))


def _area_downsample(m: np.ndarray, factor: int) -> np.ndarray:
  """[k, H, W] -> [k, H/factor, W/factor] by block means (H, W multiples of factor)."""
  k, h, w = m.shape
  return m.reshape(k, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def bank_weights(num_styles: int, style_index: Sequence[int],
                 style_weights: Optional[Sequence[float]] = None,
                 masks: Optional[np.ndarray] = None, alpha: float = 1.0) -> np.ndarray:
  """Per-bank fusion weights: [1, S] (linear fusion) or [1, h, w, S] (region fusion from masks).

  Args:
    num_styles: S, the number of banks.
    style_index: the banks used, k of them (repeats allowed).
    style_weights: k blend weights (normalised to sum 1); default equal.
    masks: [k, h, w] feature-resolution masks in [0, 1], one per index; where they sum above 1 they
      are normalised, where below 1 the remainder keeps the content (auto-encoder) features.
    alpha: scales every weight; 1 - alpha of the content features stay (content/style trade-off).
  """
  for i in style_index:
    if not 0 <= i < num_styles:
      raise ConfigError(f"--style_index {i} out of range: this model has {num_styles} styles "
                        f"(0..{num_styles - 1})")
  k = len(style_index)
  if masks is None:
    w = np.full(k, 1.0 / k) if style_weights is None else np.asarray(style_weights, np.float64)
    w = w / w.sum()
    out = np.zeros((1, num_styles), np.float32)
    np.add.at(out[0], list(style_index), w)
  else:
    total = masks.sum(axis=0, keepdims=True)
    masks = masks / np.maximum(total, 1.0)
    out = np.zeros((1,) + masks.shape[1:] + (num_styles,), np.float32)
    for j, i in enumerate(style_index):
      out[0, ..., i] += masks[j]
  return (alpha * out).astype(np.float32)


def stylize(net: StyleBankNet, params: Dict[str, Any], content01: np.ndarray, *,
            style_index: Sequence[int] = (0,), style_weights: Optional[Sequence[float]] = None,
            masks: Optional[Sequence[np.ndarray]] = None, alpha: float = 1.0,
            preserve_color: str = "none") -> np.ndarray:
  """Stylizes one image [H, W, 3] in [0, 1] with one bank or a fusion of banks.

  Args:
    net, params: from `load`.
    content01: [H, W, 3] in [0, 1]; reflect-padded to a multiple of 4 internally.
    style_index: banks to use.
    style_weights: linear fusion weights, one per index (paper: F~ = sum_i w_i K_i (x) F).
    masks: region fusion, one [H, W] mask per index (paper: F~ = sum_i M_i (K_i (x) F)), resized to
      the feature grid by area averaging; uncovered regions keep the content.
    alpha: 1 = full style; 0 = the auto-encoder's reconstruction of the content.
    preserve_color: 'none' or 'luminance' (keep the content's chrominance).
  Returns:
    [H, W, 3] float32 in [0, 1].
  """
  if preserve_color not in ("none", "luminance"):
    raise ConfigError(f"stylebank supports --preserve_color=none|luminance, got {preserve_color}")
  if masks is not None and style_weights is not None:
    raise ConfigError("give either --style_weights (linear fusion) or --mask (region fusion), "
                      "not both")
  style_index = list(style_index)
  for name, given in (("--style_weights", style_weights), ("--mask", masks)):
    if given is not None and len(given) != len(style_index):
      raise ConfigError(f"{name} has {len(given)} entries for {len(style_index)} style indices")
  content01 = np.asarray(content01, np.float32)
  h, w = content01.shape[:2]
  ph, pw = (-h) % 4, (-w) % 4
  mode = "reflect" if min(h, w) > 4 else "edge"
  x = np.pad(content01, ((0, ph), (0, pw), (0, 0)), mode=mode)
  feat_masks = None
  if masks is not None:
    m = np.stack([np.asarray(mk, np.float32) for mk in masks])
    if m.shape[1:] != (h, w):
      raise ConfigError(f"masks must match the content size {h}x{w}, got {m.shape[1]}x{m.shape[2]}")
    feat_masks = _area_downsample(np.pad(m, ((0, 0), (0, ph), (0, pw)), mode="edge"), 4)
  weights = bank_weights(StyleBankNet.num_styles(params), style_index, style_weights, feat_masks,
                         alpha)
  out = np.asarray(_fused(net, params, jnp.asarray(x)[None], jnp.asarray(weights)))[0, :h, :w]
  out = np.clip(out, 0.0, 1.0)
  if preserve_color == "luminance":
    out = np.asarray(image.luminance_transfer(content01, out), np.float32)
  return out


def make_stylizer(request: api.StylizeRequest) -> Callable[[np.ndarray], np.ndarray]:
  """`launch/stylize.py --method=stylebank --checkpoint=<workdir> --style_index=...`: checks the
  request and loads the model once; the result stylizes any content image.

  The styles live in the banks, so --style images are not used; --style_weights and --mask count
  per --style_index entry.
  """
  _check_request(request)
  net, params, _ = load(request.checkpoint)
  index = list(request.style_index or [0])
  return functools.partial(stylize, net, params, style_index=index,
                           style_weights=request.style_weights, masks=request.masks,
                           alpha=request.alpha, preserve_color=request.preserve_color)


def export_onnx(request: api.StylizeRequest):
  """`launch/stylize.py --method=stylebank --export_onnx=...`: every bank in one ONNX ModelProto,
  mixed by a `bank_weights` input whose default is the request's --style_index / --style_weights
  / --alpha fusion (`jaxstyle.export.networks.stylebank`)."""
  # Imported here: export.networks imports the model modules of every exported method.
  from jaxstyle.export import networks  # pylint: disable=g-import-not-at-top
  _check_request(request)
  if request.masks or request.preserve_color != "none":
    raise ConfigError("--mask and --preserve_color act outside the StyleBank network and are not "
                      "exported")
  _, params, config = load(request.checkpoint)
  index = list(request.style_index or [0])
  if request.style_weights is not None and len(request.style_weights) != len(index):
    raise ConfigError(f"--style_weights has {len(request.style_weights)} entries for "
                      f"{len(index)} style indices")
  weights = bank_weights(StyleBankNet.num_styles(params), index, request.style_weights,
                         alpha=request.alpha)
  return networks.stylebank(params, config, weights[0])


def _check_request(request: api.StylizeRequest):
  if request.checkpoint is None:
    raise ConfigError("stylebank needs --checkpoint=<training workdir>")
  if request.content is None:
    raise ConfigError("stylebank needs a --content image")
  if request.style_size is not None:
    raise ConfigError("stylebank fixes the brush size at training time: --style_size is not "
                      "supported")
  if request.overrides:
    raise ConfigError(
        f"stylebank stylize takes no --set options, got {', '.join(request.overrides)}")


def run_stylize(request: api.StylizeRequest) -> np.ndarray:
  """`make_stylizer(request)` applied to `request.content`."""
  return make_stylizer(request)(request.content)


def grid_style_paths(request: api.StylizeRequest) -> list:
  """The trained styles `--style_index` picked, shown by `--grid` (--style images are not used)."""
  paths = checkpoints.load_base(request.checkpoint)[2]
  return [paths[i] for i in (request.style_index or [0]) if 0 <= i < len(paths)]
