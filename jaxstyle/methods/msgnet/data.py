"""MSG-Net training data: content crops plus one style image per step at a bucketed size.

Each step draws one style from the whole `--style_dir` and one of `style_sizes` (the paper trains
with style images randomly resized to 256, 512 or 768 so that the brush size follows the style
size at test time). Both draws are a pure function of (seed, step), so a resumed run sees the same
sequence; sizes come from a short list so the train step compiles once per size.
"""
import functools
import os
from typing import Dict, List, Optional, Sequence

from absl import logging
import numpy as np

from jaxstyle import data
from jaxstyle import image
from jaxstyle.errors import ConfigError, ImageError

# Distinguishes the style stream's random numbers from the content pipeline's.
_STYLE_STREAM = 0x5A6E


def list_images(folder: str) -> List[str]:
  """Image files under `folder` (recursive, sorted); ConfigError when there are none."""
  if not os.path.isdir(folder):
    raise ConfigError(f"style folder {folder} does not exist or is not a directory")
  found = data.find_images(folder)
  if not found:
    raise ConfigError(f"no images found in style folder {folder}")
  return sorted(found)


def load_styles(style_dir: Optional[str], max_size: int):
  """All readable style images of `style_dir` (long side `max_size`), or the bundled sample.

  Returns:
    (images, paths): lists of [h, w, 3] float32 arrays in [0, 1] and their file paths
    ('<sample>' for the sample). Unreadable files are skipped with a warning.
  """
  if style_dir is None:
    return [image.resize_long_side(image.sample_style(), max_size)], ["<sample>"]
  images, paths = [], []
  for path in list_images(style_dir):
    try:
      images.append(image.load_image(path, max_size))
      paths.append(path)
    except ImageError as e:
      logging.warning("skipping style image: %s", e)
  if not images:
    raise ConfigError(f"no readable style images in {style_dir}")
  return images, paths


class ContentSource:
  """Content crops `[B, S, S, 3]` from `jaxstyle.data` (a folder, or sample images when None)."""

  def __init__(self, content_dir: Optional[str], image_size: int, seed: int):
    self.source = data.image_source(content_dir, image_size, seed=seed)

  def batch(self, step: int, batch_size: int) -> np.ndarray:
    b = self.source.batch(step, batch_size)
    return b["content"] if "content" in b else b["image"]

  @property
  def num_skipped(self) -> int:
    return getattr(self.source, "num_skipped", 0)

  def close(self):
    self.source.close()


class MultiStyleDataset:
  """Batches `{'content': [B, S, S, 3], 'style': [B, s, s, 3], 'style_index': [B]}`.

  The B rows of 'style' are copies of the one style of this step: the loop splits every batch
  leaf over the data mesh, so the style needs a batch axis; the step reads row 0.

  Args:
    content: anything with `batch(step, batch_size) -> [B, S, S, 3]` (e.g. `ContentSource`).
    styles: style images [h, w, 3] in [0, 1].
    style_sizes: square sizes a style is resized to, one drawn per step.
    seed: seed of the style/size draws.
  """

  def __init__(self, content, styles: Sequence[np.ndarray], style_sizes: Sequence[int], seed: int):
    if not styles:
      raise ConfigError("MSG-Net training needs at least one style image")
    if not style_sizes or any(int(s) < 4 for s in style_sizes):
      raise ConfigError(f"style_sizes must be sizes of at least 4 px, got {tuple(style_sizes)}")
    self.content = content
    self.styles = [np.asarray(s, np.float32) for s in styles]
    self.style_sizes = tuple(int(s) for s in style_sizes)
    self.seed = int(seed)
    self._resized = functools.lru_cache(maxsize=64)(self._resize)

  def _resize(self, index: int, size: int) -> np.ndarray:
    # Square, as the reference's StyleLoader: every bucket has exactly one shape.
    return image.resize(self.styles[index], (size, size))

  def choice(self, step: int):
    """(style index, style size) of `step`."""
    r = np.random.default_rng([self.seed, int(step), _STYLE_STREAM])
    index = int(r.integers(len(self.styles)))
    return index, self.style_sizes[int(r.integers(len(self.style_sizes)))]

  def batch(self, step: int, batch_size: int) -> Dict[str, np.ndarray]:
    index, size = self.choice(step)
    style = self._resized(index, size)
    return {
        "content": np.asarray(self.content.batch(step, batch_size), np.float32),
        "style": np.broadcast_to(style, (batch_size,) + style.shape).copy(),
        "style_index": np.full((batch_size,), index, np.int32),
    }

  @property
  def num_skipped(self) -> int:
    return getattr(self.content, "num_skipped", 0)

  def close(self):
    close = getattr(self.content, "close", None)
    if close is not None:
      close()
