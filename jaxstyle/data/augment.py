"""Per-example preprocessing: shorter side to `load_size`, then a (random) square crop and flip."""
from typing import Optional

import numpy as np

from jaxstyle import image as image_lib


def example_rng(seed: int, step: int, index: int) -> np.random.Generator:
  """The RNG of example `index` of batch `step`: a pure function of the three numbers."""
  return np.random.default_rng([seed & 0xFFFFFFFF, 0x5EED, step, index])


def resize_short_side(img: np.ndarray, size: int) -> np.ndarray:
  """Resizes so that the shorter side is `size` pixels, keeping the aspect ratio."""
  h, w = img.shape[:2]
  scale = size / min(h, w)
  hw = (max(size, int(round(h * scale))), max(size, int(round(w * scale))))
  return image_lib.resize(img, hw)


def crop_and_flip(img: np.ndarray, image_size: int, rng: Optional[np.random.Generator]) -> np.ndarray:
  """A square `image_size` crop: random position and horizontal flip, or central when rng is None.

  Args:
    img: [H, W, 3] with H, W >= image_size.
    image_size: side of the crop.
    rng: the example's RNG; None for the deterministic centre crop without flip.
  Returns:
    float32 [image_size, image_size, 3].
  """
  h, w = img.shape[:2]
  if rng is None:
    top, left, flip = (h - image_size) // 2, (w - image_size) // 2, False
  else:
    top = int(rng.integers(0, h - image_size + 1))
    left = int(rng.integers(0, w - image_size + 1))
    flip = bool(rng.integers(0, 2))
  out = img[top:top + image_size, left:left + image_size]
  if flip:
    out = out[:, ::-1]
  return np.ascontiguousarray(out, dtype=np.float32)


def prepare(img: np.ndarray, image_size: int, load_size: int,
            rng: Optional[np.random.Generator]) -> np.ndarray:
  """Shorter side to `load_size`, then `crop_and_flip`."""
  if min(img.shape[:2]) != load_size:
    img = resize_short_side(img, load_size)
  return crop_and_flip(img, image_size, rng)
