"""Stylizing images too large for one pass, tile by tile (Chen et al., "Towards Ultra-Resolution
Neural Style Transfer via Thumbnail Instance Normalization", AAAI 2022).

A feed-forward network's instance norms make every output pixel depend on the whole image, so
tiles stylized on their own disagree in tone and show seams. Here the normalisation statistics of
every layer are measured once, on a thumbnail of the whole image (`jaxstyle.nn.norms` records them
in the `norm_stats` collection), and every tile is normalised with them. What remains is a local
operator: each tile is run with a margin of context on every side that is thrown away, so the
tiles' cores join without seams. With the statistics of the full-size image (a thumbnail as large
as the image) and a margin as wide as the network's receptive field, the result equals the
untiled one (tests/test_tiling.py).

Windows are all `tile` x `tile` (edge windows are shifted inwards rather than cut), start on
multiples of the network's downsampling factor, and run in batches: one compiled program.
"""
import functools
from typing import Any, Callable, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import image as image_lib
from jaxstyle.errors import ConfigError
from jaxstyle.nn import norms

DEFAULT_MARGIN = 64


def windows(size: int, tile: int, margin: int, multiple: int) -> List[Tuple[int, int, int]]:
  """(window start, core start, core end) along one axis of `size` pixels.

  Cores partition [0, size); each window `[start, start + tile)` lies inside the image and holds
  its core with at least `margin` pixels of context on every side that is not the image border.
  """
  if size <= tile:
    return [(0, 0, size)]
  step = tile - 2 * margin
  if step < multiple or step % multiple or tile % multiple or margin % multiple:
    raise ConfigError(f"--tile {tile} and --tile_margin {margin} must be multiples of {multiple} "
                      f"with tile > 2 x margin")
  out, core = [], 0
  while core < size:
    start = min(max(core - margin, 0), size - tile)
    end = size if start + tile >= size else start + tile - margin
    out.append((start, core, end))
    core = end
  return out


def stylize(run: Callable[[np.ndarray, Any], np.ndarray], capture: Callable[[np.ndarray], Any],
            x01: np.ndarray, *, tile: int, margin: int = DEFAULT_MARGIN, multiple: int = 4,
            thumbnail: int = 0, batch: int = 4) -> np.ndarray:
  """Stylizes `x01` tile by tile with the normalisation statistics of its thumbnail.

  Args:
    run: `(windows [B, tile_h, tile_w, 3], stats) -> [B, tile_h, tile_w, 3]`, the network with
      fixed statistics.
    capture: `[1, h, w, 3] -> stats`, the network recording its statistics.
    x01: `[H, W, 3]` in [0, 1], H and W multiples of `multiple`.
    tile: window side in pixels.
    margin: context thrown away on each inner side of a window.
    multiple: the network's size multiple (its downsampling factor).
    thumbnail: long side of the image the statistics come from; 0 = `tile`. At least the size of
      the image: the image itself (exact statistics).
    batch: windows per call.

  Returns:
    `[H, W, 3]` float32, the network's raw output (not clipped).
  """
  check(tile, margin, thumbnail, multiple)
  h, w = x01.shape[:2]
  if h % multiple or w % multiple:
    raise ValueError(f"tiled input {h}x{w} is not a multiple of {multiple}")
  thumb = x01
  side = thumbnail or tile
  if max(h, w) > side:
    th, tw = (max(multiple, round(d * side / max(h, w) / multiple) * multiple) for d in (h, w))
    thumb = image_lib.resize(x01, (th, tw))
  stats = capture(np.asarray(thumb, np.float32)[None])
  rows, cols = windows(h, tile, margin, multiple), windows(w, tile, margin, multiple)
  th, tw = min(h, tile), min(w, tile)
  jobs = [(r, c) for r in rows for c in cols]
  out = np.zeros((h, w, 3), np.float32)
  for i in range(0, len(jobs), batch):
    group = jobs[i:i + batch]
    crops = np.stack([x01[r[0]:r[0] + th, c[0]:c[0] + tw] for r, c in group])
    if len(group) < batch and len(jobs) > batch:  # keep one batch shape: one compiled program
      crops = np.concatenate([crops, np.repeat(crops[-1:], batch - len(group), 0)])
    ys = np.asarray(run(crops, stats), np.float32)
    for (r, c), y in zip(group, ys):
      out[r[1]:r[2], c[1]:c[2]] = y[r[1] - r[0]:r[2] - r[0], c[1] - c[0]:c[2] - c[0]]
  return out


@functools.partial(jax.jit, static_argnames=("module", "method"))
def _run(module: nn.Module, params, stats, x, args, method):
  return module.apply({"params": params, norms.STATS: stats}, x, *args, method=method)


@functools.partial(jax.jit, static_argnames=("module", "method"))
def _capture(module: nn.Module, params, x, args, method):
  _, state = module.apply({"params": params}, x, *args, method=method, mutable=[norms.STATS])
  return state[norms.STATS]


def apply_tiled(module: nn.Module, params: Any, x01: np.ndarray, *args, tile: int,
                margin: int = DEFAULT_MARGIN, multiple: int = 4, thumbnail: int = 0,
                method: Optional[str] = None) -> np.ndarray:
  """`stylize` for `module.apply({'params': params}, windows, *args, method=method)`, a network
  whose normalisation layers are `InstanceNorm` / `ConditionalInstanceNorm` (`args` broadcast
  over the windows, e.g. a style Gram `[1, C, C]`)."""
  args = tuple(jnp.asarray(a) for a in args)
  return stylize(lambda crops, stats: _run(module, params, stats, jnp.asarray(crops), args, method),
                 lambda x: _capture(module, params, jnp.asarray(x), args, method),
                 x01, tile=tile, margin=margin, multiple=multiple, thumbnail=thumbnail)


def check(tile: int, margin: int, thumbnail: int, multiple: int = 4) -> None:
  """The user's tiling settings: `tile` 0 (off) or positive, margin and thumbnail non-negative,
  tile and margin multiples of the networks' downsampling factor."""
  if tile < 0 or margin < 0 or thumbnail < 0:
    raise ConfigError("--tile, --tile_margin and --tile_thumbnail must not be negative")
  if tile and (tile % multiple or margin % multiple):
    raise ConfigError(f"--tile {tile} and --tile_margin {margin} must be multiples of {multiple}")
  if tile and tile < 2 * margin + multiple:
    raise ConfigError(f"--tile {tile} must be larger than twice --tile_margin {margin}")


def settings(request: Any) -> dict:
  """A StylizeRequest's tiling settings as `stylize` keyword arguments (checked)."""
  check(request.tile, request.tile_margin, request.tile_thumbnail)
  return dict(tile=request.tile, tile_margin=request.tile_margin,
              tile_thumbnail=request.tile_thumbnail)
