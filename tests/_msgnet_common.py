"""Shared by the MSG-Net test files: the narrow test configuration and a folder of style images."""
import os

import numpy as np

from jaxstyle.methods.msgnet.model import MSGNetConfig

# Few VGG layers keep the compiled train step small; the reference layer lists are the default.
TINY = MSGNetConfig(ngf=4, stem_features=8, n_blocks=1, style_sizes=(16, 24),
                    style_layers=("relu1_2", "relu2_2"), content_layers=("relu2_2",))


def write_styles(folder):
  """Three small, distinct style images: stripes, a smooth gradient with a disc, a checkerboard."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  y, x = np.mgrid[0:40, 0:56].astype(np.float32)
  s = 0.5 + 0.5 * np.sin((x + y) / 3.0)
  stripes = np.stack([s, 1 - s, 0.3 + 0.2 * np.cos(x / 5.0)], -1)
  disc = ((y - 20) ** 2 + (x - 30) ** 2 < 150).astype(np.float32)
  smooth = np.stack([x / 56, y / 40, 0.5 + 0.4 * disc], -1)
  checker = np.kron(np.indices((5, 7)).sum(0) % 2, np.ones((8, 8)))[..., None] * [0.9, 0.2, 0.1]
  for name, img in (("a_stripes.png", stripes), ("b_smooth.png", smooth),
                    ("c_checker.png", checker)):
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(os.path.join(folder, name))
  return folder
