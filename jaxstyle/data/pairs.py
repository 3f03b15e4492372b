"""Content/style training pairs for arbitrary-style methods (AdaIN, Magenta).

Both sides are random crops from image folders (`jaxstyle.data.ImageFolder`), as in the AdaIN
reference (MS-COCO + WikiArt, resized to 512 then cropped to 256). Without folders the content
falls back to `jaxstyle.data.SampleImages` and the style to crops of
`jaxstyle.image.sample_style()`.
Every batch is a pure function of (seed, step), so a resumed run sees the same data.
"""
from typing import Any, Dict, Optional

import numpy as np

from jaxstyle import image
from jaxstyle.data.folder import ImageFolder
from jaxstyle.data.samples import SampleImages

# Distinct streams for the two sides, so content and style crops are not correlated.
_STYLE_SEED_OFFSET = 7919


def _images(batch: Dict[str, np.ndarray]) -> np.ndarray:
  return batch["image"] if "image" in batch else batch["content"]


class ContentStylePairs:
  """Batches `{'content': [B, S, S, 3], 'style': [B, S, S, 3]}` in [0, 1].

  Args:
    content_dir: folder of content photos, or None for the bundled samples.
    style_dir: folder of style images, or None for crops of the sample style.
    image_size: crop side S.
    seed: data seed.
    load_size: short side images are resized to before cropping (None: 2 * S, the reference's
      512 -> 256 ratio).
  """

  def __init__(self, content_dir: Optional[str], style_dir: Optional[str], image_size: int, *,
               seed: int, load_size: Optional[int] = None):
    load_size = max(load_size or 2 * image_size, image_size)
    if content_dir is None:
      self.content = SampleImages(image_size, seed=seed, load_size=load_size)
    else:
      self.content = ImageFolder(content_dir, image_size, seed=seed, load_size=load_size)
    style_seed = seed + _STYLE_SEED_OFFSET
    if style_dir is None:
      self.style = SampleImages(image_size, seed=style_seed, load_size=load_size,
                                     images=[image.sample_style()])
    else:
      self.style = ImageFolder(style_dir, image_size, seed=style_seed, load_size=load_size)

  @property
  def num_skipped(self) -> int:
    return sum(getattr(s, "num_skipped", 0) for s in (self.content, self.style))

  def batch(self, step: int, batch_size: int) -> Dict[str, np.ndarray]:
    return {"content": _images(self.content.batch(step, batch_size)),
            "style": _images(self.style.batch(step, batch_size))}

  def close(self):
    for s in (self.content, self.style):
      if hasattr(s, "close"):
        s.close()


def make_pair_trainer(request: Any, config_cls: Any, trainer_cls: Any):
  """(trainer, dataset) of an arbitrary-style method trained on content/style pairs (AdaIN,
  Magenta): its config with the request's overrides, the request's VGG, a `ContentStylePairs`.

  `trainer_cls(config, loss_net, learning_rate=, dtype=, weights=)`; `config.load_size` (0 = the
  dataset's default) sets the short side before random crops.
  """
  # Imported here: the data package must not need the model stack to be importable.
  from jaxstyle import api, vgg  # pylint: disable=g-import-not-at-top,g-multiple-import
  from jaxstyle.train import precision  # pylint: disable=g-import-not-at-top
  config = api.apply_overrides(config_cls(), request.overrides)
  loss_net = vgg.load_loss_net(request.weights)
  trainer = trainer_cls(config, loss_net, learning_rate=request.learning_rate,
                        dtype=precision.compute_dtype(request), weights=request.weights)
  dataset = ContentStylePairs(request.content_dir, request.style_dir, request.image_size,
                              seed=request.seed, load_size=config.load_size or None)
  return trainer, dataset
