"""User controls shared by the arbitrary-style methods (AdaIN, Magenta, the published Magenta):
input checks, style-blend weights, spatial (masked) regions, embedding interpolation."""
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from jaxstyle import image
from jaxstyle.errors import ConfigError


def request_stylizer(stylize: Callable[..., np.ndarray], request: Any,
                     encode_style: Optional[Callable[[np.ndarray], Any]] = None,
                     **settings) -> Callable[[np.ndarray], np.ndarray]:
  """`content01 -> stylize(content01, styles, ...)` with the request's styles, blend weights,
  alpha, masks and colour mode (plus `settings`), reporting one step to `request.progress`.

  With `encode_style` (style image -> what the network derives from it: VGG features, an
  embedding), the styles are encoded on the first call and passed to every call as
  `style_codes`, so a folder of frames runs the style encoder once, not once per frame. Not under
  `preserve_color='histogram'`, which recolours the styles to each content first.
  """
  reuse = encode_style is not None and request.preserve_color != "histogram"
  codes = []

  def stylizer(content01: np.ndarray) -> np.ndarray:
    if reuse and not codes:
      codes.extend(encode_style(np.asarray(s, np.float32)) for s in request.styles)
    out = stylize(content01, request.styles, style_weights=request.style_weights,
                  alpha=request.alpha, masks=request.masks, preserve_color=request.preserve_color,
                  **(dict(settings, style_codes=codes) if reuse else settings))
    if request.progress is not None:
      request.progress(1, 0.0)
    return out
  return stylizer


def check_codes(style_codes: Optional[Sequence[Any]], styles01: Sequence[np.ndarray],
                preserve_color: str) -> None:
  """Precomputed style codes must be one per style, and cannot be used with
  `preserve_color='histogram'` (the styles are recoloured to the content before encoding)."""
  if style_codes is None:
    return
  if len(style_codes) != len(styles01):
    raise ConfigError(f"{len(style_codes)} style codes for {len(styles01)} styles")
  if preserve_color == "histogram":
    raise ConfigError("precomputed style codes cannot be used with preserve_color='histogram', "
                      "which recolours each style to the content before encoding it")


def check_inputs(method: str, content01: Optional[np.ndarray], styles01: Sequence[np.ndarray],
                 style_weights: Optional[Sequence[float]],
                 masks: Optional[Sequence[np.ndarray]]) -> List[float]:
  """Validates a stylize call; returns the blend weights normalised to sum 1 (default equal).

  Raises:
    ConfigError: no content or style, weights/masks not one per style, negative or all-zero
      weights, or a mask whose shape differs from the content's.
  """
  if content01 is None:
    raise ConfigError(f"{method} needs a content image")
  if not styles01:
    raise ConfigError(f"{method} needs at least one style image")
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


def prepare(method: str, content01: np.ndarray, styles01: Sequence[np.ndarray], *,
            style_weights: Optional[Sequence[float]], alpha: float,
            masks: Optional[Sequence[np.ndarray]], preserve_color: str):
  """`check_inputs` plus alpha and colour mode; styles colour-matched to the content under
  `preserve_color='histogram'`. Returns (content01, styles01, normalised weights) as float32."""
  content01 = np.asarray(content01, np.float32)
  weights = check_inputs(method, content01, styles01, style_weights, masks)
  if not 0.0 <= alpha <= 1.0:
    raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
  if preserve_color not in ("none", "histogram", "luminance"):
    raise ConfigError(f"unknown preserve_color {preserve_color!r}")
  styles01 = [np.asarray(s, np.float32) for s in styles01]
  if preserve_color == "histogram":
    styles01 = [np.asarray(image.match_color(s, content01), np.float32) for s in styles01]
  return content01, styles01, weights


def region_weights(masks: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
  """Per-style pixel weights `[N, H, W]` summing to 1: overlapping masks are normalised, and what
  no mask covers takes the global blend `weights`."""
  m = np.clip(np.stack([np.asarray(x, np.float32) for x in masks]), 0.0, 1.0)
  total = m.sum(0)
  uncovered = np.clip(1.0 - total, 0.0, 1.0)
  return m / np.maximum(total, 1.0) + uncovered * np.asarray(weights, np.float32)[:, None, None]


def pad_to(x: np.ndarray, multiple: int) -> np.ndarray:
  """Pads the bottom/right of `[H, W, ...]` to multiples of `multiple` (reflect; edge if tiny),
  so a network that downsamples by `multiple` gives back exactly the input size once cropped."""
  h, w = x.shape[:2]
  pads = ((0, (-h) % multiple), (0, (-w) % multiple)) + ((0, 0),) * (x.ndim - 2)
  return np.pad(x, pads, mode="reflect" if min(h, w) > multiple else "edge")


def stylize_with_embeddings(method: str, content01: np.ndarray, styles01: Sequence[np.ndarray], *,
                            embed_fn: Callable[[np.ndarray], Any],
                            transform_fn: Callable[[np.ndarray, Any], np.ndarray],
                            multiple: int, style_weights: Optional[Sequence[float]] = None,
                            alpha: float = 1.0, masks: Optional[Sequence[np.ndarray]] = None,
                            preserve_color: str = "none",
                            style_codes: Optional[Sequence[Any]] = None,
                            identity_size: int = 0) -> np.ndarray:
  """Every control of a style-embedding network (Magenta): Ghiasi et al.'s identity interpolation
  `alpha * S(style) + (1 - alpha) * S(content)`, style blends as mixed embeddings, masks by
  blending the outputs per region, colour preservation.

  Args:
    method: the method's name, for error messages.
    content01: `[H, W, 3]` in [0, 1].
    styles01: style images `[h_i, w_i, 3]` in [0, 1].
    embed_fn: `[h, w, 3]` image -> its style embedding.
    transform_fn: (`[1, H', W', 3]` padded content, embedding) -> `[1, H', W', 3]` output.
    multiple: the transformer's downsampling factor (the content is padded to it, then cropped).
    style_weights, alpha, masks, preserve_color: the user's controls (see `launch/stylize.py`).
    style_codes: `embed_fn` of each style, when already computed (`request_stylizer`).
    identity_size: > 0: the content's own embedding (alpha < 1) is taken from it resized to this
      long side when larger (tiled stylization of large images).

  Returns:
    `[H, W, 3]` float32 in [0, 1].
  """
  content01, styles01, weights = prepare(method, content01, styles01, style_weights=style_weights,
                                         alpha=alpha, masks=masks, preserve_color=preserve_color)

  check_codes(style_codes, styles01, preserve_color)
  h, w = content01.shape[:2]
  padded = pad_to(content01, multiple)[None]
  identity = 0.0
  if alpha < 1.0:
    small = identity_size and max(h, w) > identity_size
    identity = embed_fn(image.resize_long_side(content01, identity_size) if small else content01)
  if style_codes is None:
    style_codes = [embed_fn(s) for s in styles01]
  embeddings = [alpha * e + (1.0 - alpha) * identity for e in style_codes]

  def run(e):
    return np.asarray(transform_fn(padded, e))[0, :h, :w]

  if masks is None:
    out = run(sum(wi * e for wi, e in zip(weights, embeddings)))
  else:
    regions = region_weights(masks, weights)
    out = sum(r[..., None] * run(e) for r, e in zip(regions, embeddings) if r.any())
  out = np.clip(out, 0.0, 1.0).astype(np.float32)
  if preserve_color == "luminance":
    out = np.asarray(image.luminance_transfer(content01, out), np.float32)
  return out
