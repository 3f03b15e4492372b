"""Reference VGG files for the converter tests: a torchvision-layout PyTorch VGG, HED-layout .h5."""
import h5py
import numpy as np
import torch
from torch import nn

from jaxstyle import vgg

class TorchVGG(nn.Module):
  """torchvision's VGG layout (`features` Sequential + `classifier`), built without torchvision."""

  def __init__(self, depth):
    super().__init__()
    layers, cin = [], 3
    for b, n in enumerate(vgg.BLOCKS[depth]):
      for _ in range(n):
        layers += [nn.Conv2d(cin, vgg.WIDTHS[b], 3, padding=1), nn.ReLU(inplace=True)]
        cin = vgg.WIDTHS[b]
      layers.append(nn.MaxPool2d(2, 2))
    self.features = nn.Sequential(*layers)
    # A small head: only its key names matter (the converter must ignore classifier.*).
    self.classifier = nn.Sequential(nn.Linear(512, 16), nn.ReLU(True), nn.Dropout(),
                                    nn.Linear(16, 10))
    for m in self.features:
      if isinstance(m, nn.Conv2d):  # torchvision's own init, plus non-zero biases to test them
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(m.bias, 0.0, 0.1)

  def named_activations(self, x, depth):
    """Every activation, named like jaxstyle's VGG, as NHWC NumPy arrays."""
    names = iter(vgg.layer_names(depth))
    out = {}
    with torch.no_grad():
      for module in self.features:
        x = module(x) if not isinstance(module, nn.ReLU) else torch.relu(x)
        out[next(names)] = np.transpose(x.numpy(), (0, 2, 3, 1))
    return out


def make_pth_files(root):
  """Random torchvision-layout VGG16/19 state dicts saved under `root`.

  Returns ({depth: model}, {depth: path}).
  """
  torch.manual_seed(0)
  models, paths = {}, {}
  for depth in (16, 19):
    models[depth] = TorchVGG(depth).eval()
    paths[depth] = str(root / f"vgg{depth}_random.pth")
    torch.save(models[depth].state_dict(), paths[depth])
  return models, paths


def write_hed_h5(path, depth=16, seed=0, skip=None, bad_shape=None):
  """A random HED-layout file (edge heads included) and the jaxstyle params it should become."""
  rng = np.random.default_rng(seed)
  params = {}
  with h5py.File(path, "w") as f:
    for layer, shapes in vgg.param_shapes(depth).items():
      b, i = int(layer[4]), int(layer[6:])
      fan_in = np.prod(shapes["kernel"][:3])
      kernel = (rng.standard_normal(shapes["kernel"]) * np.sqrt(2 / fan_in)).astype(np.float32)
      bias = (0.1 * rng.standard_normal(shapes["bias"])).astype(np.float32)
      params[layer] = {"kernel": kernel, "bias": bias}
      group = f"block{b}/layers/{'conv2d' if i == 1 else f'conv2d_{i - 1}'}/vars"
      for leaf, value in (("0", kernel), ("1", bias)):
        if skip == f"{group}/{leaf}":
          continue
        if bad_shape == f"{group}/{leaf}":
          value = value[..., :-1]
        f.create_dataset(f"{group}/{leaf}", data=value)
    for k, c in enumerate((64, 128, 256, 512, 512), start=1):
      f.create_dataset(f"dsn{k}/vars/0", data=np.zeros((1, 1, c, 1), np.float32))
      f.create_dataset(f"dsn{k}/vars/1", data=np.zeros((1,), np.float32))
    f.create_dataset("fuse/vars/0", data=np.full((1, 1, 5, 1), 0.2, np.float32))
    f.create_dataset("fuse/vars/1", data=np.zeros((1,), np.float32))
    f.create_group("vars")
  return params



def rel_err(a, b):
  return float(np.abs(np.asarray(a) - b).max() / (np.abs(b).max() + 1e-12))
