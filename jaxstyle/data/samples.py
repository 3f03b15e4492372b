"""`SampleImages`: a few bundled photos, so training runs without any dataset on disk."""
from typing import Optional, Sequence

import numpy as np

from jaxstyle.data.base import BatchedImages

# scikit-image's bundled colour photos (no download needed).
CONTENT_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                   "immunohistochemistry", "colorwheel")


def _generated(index: int, size: int = 256) -> np.ndarray:
  """A procedural colour image (when scikit-image is missing): gradients, rings and a disc."""
  rng = np.random.default_rng(index)
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  freq, phase = rng.uniform(4, 20, 3), rng.uniform(0, 6.28, 3)
  r = np.hypot(x - rng.uniform(0.2, 0.8), y - rng.uniform(0.2, 0.8))
  img = np.stack([0.5 + 0.5 * np.sin(freq[c] * (x, y, r)[c] * 3.14 + phase[c]) for c in range(3)],
                 axis=-1)
  return np.clip(img, 0, 1).astype(np.float32)


def load_samples(names: Sequence[str] = CONTENT_SAMPLES) -> list:
  """The named scikit-image samples as float32 RGB [0, 1]; generated images stand in for missing ones."""
  out = []
  for i, name in enumerate(names):
    try:
      from skimage import data as skdata  # pylint: disable=g-import-not-at-top
      img = np.asarray(getattr(skdata, name)())
      if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
      img = img[..., :3].astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    except Exception:  # pylint: disable=broad-except  no scikit-image or no such sample
      img = _generated(i)
    out.append(np.clip(img, 0, 1).astype(np.float32))
  return out


class SampleImages(BatchedImages):
  """The `ImageFolder` interface over a handful of in-memory sample photos.

  Same batching, crops and flips as `ImageFolder`; with `labels`, each image is its own class.
  Images are resized once (shorter side to `load_size`) and kept in memory.
  """

  def __init__(self, image_size: int, *, seed: int, load_size: Optional[int] = None,
               labels: bool = False, augment: bool = True, names: Sequence[str] = CONTENT_SAMPLES,
               images: Optional[Sequence[np.ndarray]] = None):
    """Args: as `ImageFolder`; `names` picks scikit-image samples, or `images` gives them."""
    super().__init__(image_size, seed=seed, load_size=load_size, labels=labels, augment=augment,
                     num_workers=1)
    from jaxstyle.data.augment import resize_short_side  # pylint: disable=g-import-not-at-top
    raw = list(images) if images is not None else load_samples(names)
    self.class_names = tuple(names) if images is None else tuple(f"image{i}" for i in range(len(raw)))
    self._images = [resize_short_side(np.asarray(im, np.float32), self.load_size) for im in raw]
    self.num_items = len(self._images)

  @property
  def num_classes(self) -> int:
    return self.num_items

  def _load(self, item: int) -> np.ndarray:
    return self._images[item]

  def _label(self, item: int) -> int:
    return item
