"""Building a StyleBank run from a TrainRequest: style images, datasets, incremental mode."""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from jaxstyle import api
from jaxstyle import data
from jaxstyle import image
from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.methods.stylebank import checkpoints
from jaxstyle.methods.stylebank.model import StyleBankConfig
from jaxstyle.methods.stylebank.trainer import StyleBankTrainer
from jaxstyle.train import precision

SAMPLE_STYLES = 2


class StyleBankDataset:
  """Batches `{'content': [B, S, S, 3], 'style_id': int32 [B]}`, a pure function of (seed, step).

  Style ids are drawn uniformly from `[first_style, first_style + num_styles)`.
  """

  def __init__(self, content_dir: Optional[str], image_size: int, seed: int, num_styles: int,
               first_style: int = 0):
    self.source = data.image_source(content_dir, image_size, seed=seed)
    self.seed, self.num_styles, self.first_style = seed, num_styles, first_style

  @property
  def num_skipped(self) -> int:
    return getattr(self.source, "num_skipped", 0)

  def batch(self, step: int, batch_size: int) -> Dict[str, np.ndarray]:
    b = self.source.batch(step, batch_size)
    rng = np.random.default_rng((self.seed, step, 0x5B))
    ids = self.first_style + rng.integers(0, self.num_styles, size=batch_size)
    return {"content": b["image"] if "image" in b else b["content"],
            "style_id": ids.astype(np.int32)}

  def close(self):
    close = getattr(self.source, "close", None)
    if close:
      close()


def list_images(path: str) -> List[str]:
  """`path` itself if it is a file, else the image files under it (recursive, sorted)."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise ConfigError(f"style path {path} does not exist")
  found = data.find_images(path)
  if not found:
    raise ConfigError(f"no images found in style folder {path}")
  return found


def load_styles(paths: Sequence[str], style_dir: Optional[str], size: int
                ) -> Tuple[List[np.ndarray], List[str]]:
  """One style per image: `paths` (files or folders) if given, else `style_dir`, else samples."""
  if paths:
    files = [f for p in paths for f in list_images(p)]
  elif style_dir is not None:
    files = list_images(style_dir)
  else:
    # Smoke runs without data: the sample style plus a recoloured copy, so the banks differ.
    base = image.resize_long_side(image.sample_style(), size)
    styles = [base, np.ascontiguousarray(base[..., ::-1])][:SAMPLE_STYLES]
    return styles, ["<sample>", "<sample-bgr>"][:SAMPLE_STYLES]
  return [image.load_image(f, size) for f in files], files


def make_trainer(request: api.TrainRequest):
  """Builds (trainer, dataset) for `launch/train.py --method=stylebank`.

  With `--set base_checkpoint=<workdir>` this is StyleBank's incremental learning: the trained model
  is loaded, one new bank per new style (`--set new_styles=a.jpg,b/` or the images of
  --style_dir) is appended and only the new banks train, with the auto-encoder frozen.
  """
  config = api.apply_overrides(StyleBankConfig(), request.overrides)
  if config.width <= 0 or config.style_size <= 0 or config.bank_layers < 1:
    raise ConfigError("width, style_size and bank_layers must be positive")
  config = api.with_style_layer_weights(config)
  if config.stylize_steps < 1:
    raise ConfigError(f"stylize_steps (T) must be >= 1, got {config.stylize_steps}")
  if config.upsample not in ("nearest", "transpose"):
    raise ConfigError(f"upsample must be nearest or transpose, got {config.upsample!r}")
  if config.new_styles and not config.base_checkpoint:
    raise ConfigError("new_styles needs base_checkpoint=<trained stylebank workdir>")
  base_params, base_paths = None, ()
  if config.base_checkpoint:
    if os.path.abspath(config.base_checkpoint) == os.path.abspath(request.workdir):
      raise ConfigError("base_checkpoint must differ from --workdir (the base model stays intact)")
    base_model, base_params, base_paths = checkpoints.load_base(config.base_checkpoint)
    config = checkpoints.inherit_architecture(config, base_model)
  styles, paths = load_styles(config.new_styles, request.style_dir, config.style_size)
  loss_net = vgg.load_loss_net(request.weights)
  trainer = StyleBankTrainer(config, loss_net, styles, learning_rate=request.learning_rate,
                             dtype=precision.compute_dtype(request), style_paths=paths,
                             base_params=base_params, base_style_paths=base_paths)
  dataset = StyleBankDataset(request.content_dir, request.image_size, request.seed,
                             num_styles=len(styles), first_style=trainer.bank_offset)
  return trainer, dataset
