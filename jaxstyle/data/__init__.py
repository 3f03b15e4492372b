"""Training data: image folders and sample images as deterministic batches.

`batch(step, batch_size)` is a pure function of the dataset's seed and `step`:
{'image': float32 [B, S, S, 3] in [0, 1], 'label': int32 [B] (labelled datasets)}.
"""
from jaxstyle.data.folder import IMAGE_SUFFIXES, ImageFolder, find_images
from jaxstyle.data.samples import SampleImages, load_samples
from jaxstyle.data.pairs import ContentStylePairs


def image_source(root, image_size, *, seed, **kwargs):
  """`ImageFolder(root, ...)`, or `SampleImages(...)` when `root` is None (runs without data)."""
  if root is None:
    kwargs.pop("num_workers", None)
    kwargs.pop("max_pixels", None)
    return SampleImages(image_size, seed=seed, **kwargs)
  return ImageFolder(root, image_size, seed=seed, **kwargs)
