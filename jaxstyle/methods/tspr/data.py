"""TSPR training pairs: photos plus paintings grouped by style class (one sub-folder per class).

Each example holds what one iteration of the reference (`data/painters13_dataset.py`,
`mapping_mode=one_to_all`, `num_style_samples=1`) uses:
  content       a photo (A)               content_peer  another photo (A's "style" sample)
  style         a painting of class c (B)  style_peer    another painting of class c (the peer)
  label         c
Batches are pure functions of (seed, step): photos come from one image source, and each example's
paintings from its class's source at a position determined by (step, example).
"""
import os
from typing import List, Optional, Sequence

import numpy as np

from jaxstyle import data as data_lib
from jaxstyle.data import find_images
from jaxstyle.errors import ConfigError


def _texture(kind: int, variant: int, size: int = 256) -> np.ndarray:
  """A procedural "painting" of style class `kind` (stripes, dots, waves), varied by `variant`."""
  rng = np.random.default_rng([kind, variant])
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  base, accent = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
  freq = rng.uniform(6, 14)
  if kind % 3 == 0:    # diagonal stripes
    angle = rng.uniform(0, np.pi)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)))
  elif kind % 3 == 1:  # dots on a grid
    t = (((x * freq) % 1 - 0.5) ** 2 + ((y * freq) % 1 - 0.5) ** 2 < 0.09).astype(np.float32)
  else:                # concentric waves
    r = np.hypot(x - rng.uniform(0.2, 0.8), y - rng.uniform(0.2, 0.8))
    t = 0.5 + 0.5 * np.cos(2 * np.pi * freq * r)
  img = base * (1 - t[..., None]) + accent * t[..., None]
  img += 0.04 * rng.standard_normal(img.shape)  # brush-like grain
  return np.clip(img, 0, 1).astype(np.float32)


def synthetic_style_classes(num_classes: int = 3, per_class: int = 4) -> List[List[np.ndarray]]:
  """Generated texture classes standing in for painter folders when no `--style_dir` is given."""
  return [[_texture(c, v) for v in range(per_class)] for c in range(num_classes)]


def class_folders(style_dir: str) -> List[str]:
  """The sub-folders of `style_dir` holding images (one style class each), or `[style_dir]`."""
  subdirs = sorted(os.path.join(style_dir, d) for d in os.listdir(style_dir)
                   if not d.startswith(".") and os.path.isdir(os.path.join(style_dir, d)))
  classes = [d for d in subdirs if find_images(d)]
  if classes:
    return classes
  if find_images(style_dir):
    return [style_dir]
  raise ConfigError(f"no style images found in {style_dir} (expected one sub-folder per style class)")


class TSPRPairs:
  """`batch(step, B)` -> {'content', 'content_peer', 'style', 'style_peer': [B,S,S,3], 'label': [B]}."""

  def __init__(self, content_source, style_sources: Sequence, *, seed: int):
    if not style_sources:
      raise ConfigError("tspr needs at least one style class")
    self.content = content_source
    self.styles = list(style_sources)
    self.seed = int(seed)

  @property
  def num_classes(self) -> int:
    return len(self.styles)

  @property
  def num_skipped(self) -> int:
    return sum(getattr(s, "num_skipped", 0) for s in [self.content] + self.styles)

  def batch(self, step: int, batch_size: int):
    photos = self.content.batch(step, 2 * batch_size)["image"]
    rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 0x7593, step])
    labels = rng.integers(0, len(self.styles), batch_size).astype(np.int32)
    # Example i of batch `step` reads pair number step*B+i of its class: deterministic and distinct.
    pairs = [self.styles[c].batch(step * batch_size + i, 2)["image"] for i, c in enumerate(labels)]
    return {"content": photos[:batch_size], "content_peer": photos[batch_size:],
            "style": np.stack([p[0] for p in pairs]), "style_peer": np.stack([p[1] for p in pairs]),
            "label": labels}

  def close(self):
    for source in [self.content] + self.styles:
      close = getattr(source, "close", None)
      if close is not None:
        close()


def make_dataset(content_dir: Optional[str], style_dir: Optional[str], image_size: int, *,
                 seed: int, load_size: int) -> TSPRPairs:
  """Photos from `content_dir` (None: sample photos) and style classes from `style_dir`'s
  sub-folders (None: generated texture classes)."""
  content = data_lib.image_source(content_dir, image_size, seed=seed, load_size=load_size)
  if style_dir is None:
    styles = [data_lib.SampleImages(image_size, seed=seed + 1 + c, load_size=load_size, images=imgs)
              for c, imgs in enumerate(synthetic_style_classes())]
  else:
    # Serial decoding per class: each example asks a class for two images, so prefetch would waste work.
    styles = [data_lib.ImageFolder(d, image_size, seed=seed + 1 + c, load_size=load_size,
                                   num_workers=1)
              for c, d in enumerate(class_folders(style_dir))]
  return TSPRPairs(content, styles, seed=seed)
