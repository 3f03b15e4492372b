"""`ImageFolder`: training images found recursively under a folder."""
import os
from typing import List, Optional, Tuple

import numpy as np

from jaxstyle import image as image_lib
from jaxstyle.data.base import BatchedImages
from jaxstyle.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def natural_key(name: str) -> list:
  """Sort key that orders digit runs numerically: frame_2 before frame_10, features.9 before
  features.10."""
  out, num = [], ""
  for ch in str(name) + "\0":
    if ch.isdigit():
      num += ch
      continue
    if num:
      out.append((0, int(num), ""))
      num = ""
    out.append((1, 0, ch))
  return out


def find_images(root: str) -> List[str]:
  """Image files under `root` (recursive, symlinks followed once, hidden entries skipped), sorted."""
  found, seen = [], set()
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    real = os.path.realpath(dirpath)
    if real in seen:  # a symlink cycle
      dirnames[:] = []
      continue
    seen.add(real)
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    found.extend(os.path.join(dirpath, f) for f in filenames
                 if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES))
  return sorted(found)


class ImageFolder(BatchedImages):
  """Random square crops of the images under `root`, as deterministic batches.

  Each image's shorter side is resized to `load_size`, then cropped to `image_size` at a random
  position and flipped at random (seeded by `(seed, step, i)`); without `augment`, the centre
  crop. The order is a per-epoch permutation seeded by `(seed, epoch)`.

  Attributes:
    paths: the image files, sorted.
    class_names: with `labels`, the sorted first-level sub-folder names (label = index).
    num_skipped: unreadable files met so far (each replaced by the next file of the epoch).
  """

  def __init__(self, root: str, image_size: int, *, seed: int, load_size: Optional[int] = None,
               labels: bool = False, augment: bool = True, num_workers: Optional[int] = None,
               max_pixels: Optional[int] = image_lib.DEFAULT_MAX_PIXELS):
    """Scans `root`.

    Args:
      root: folder searched recursively; with `labels`, one sub-folder per class.
      image_size: side S of the square crops.
      seed: seed of the order and the augmentation.
      load_size: shorter side before cropping (default `image_size`).
      labels: also return 'label' (int32), the index of the image's first-level sub-folder.
      augment: random crop + flip (else centre crop).
      num_workers: decoding threads (1 = serial, no prefetch).
      max_pixels: larger images are skipped as unreadable (decompression bombs).
    Raises:
      ConfigError: `root` is not a folder or holds no images (or, with `labels`, holds images
        outside class sub-folders).
    """
    super().__init__(image_size, seed=seed, load_size=load_size, labels=labels, augment=augment,
                     num_workers=num_workers)
    if not os.path.isdir(root):
      raise ConfigError(f"image folder {root} does not exist or is not a directory")
    self.root = os.path.abspath(root)
    self.max_pixels = max_pixels
    self.paths = find_images(self.root)
    if not self.paths:
      raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    self.num_items = len(self.paths)
    self.class_names: Tuple[str, ...] = ()
    self._labels = np.zeros(self.num_items, np.int32)
    if labels:
      self._assign_labels()

  def _assign_labels(self):
    tops = [os.path.relpath(p, self.root).split(os.sep) for p in self.paths]
    loose = [os.path.join(*t) for t in tops if len(t) == 1]
    if loose:
      raise ConfigError(f"{self.root} needs one sub-folder per class, but {len(loose)} images lie "
                        f"directly in it (e.g. {loose[0]})")
    self.class_names = tuple(sorted({t[0] for t in tops}))
    index = {name: i for i, name in enumerate(self.class_names)}
    self._labels = np.array([index[t[0]] for t in tops], np.int32)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def _load(self, item: int) -> np.ndarray:
    return image_lib.load_image(self.paths[item], max_pixels=self.max_pixels)

  def _label(self, item: int) -> int:
    return int(self._labels[item])

  def _describe(self, item: int) -> str:
    return self.paths[item]
