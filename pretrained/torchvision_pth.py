"""torchvision VGG16/19 state dicts (`.pth`) -> jaxstyle parameters.

torchvision's `vgg16()`/`vgg19()` keep the trunk in `features`, an `nn.Sequential` of
conv, ReLU, ..., max-pool; the convolutions sit at fixed indices (`features.0`, `features.2`,
`features.5`, ...) with OIHW weights. The `classifier.*` head is ignored. PyTorch is imported only
when a `.pth` file is actually read, so it is never a runtime dependency of the library.

The key names do not tell the input convention: jcjohnson's Caffe conversions used by
neural-style-pt (`vgg19-d01eb7cb.pth`, `vgg16-00b39a1b.pth`) have torchvision's keys but expect
BGR 0-255 minus the mean, like the Caffe originals. Those two files are recognised by the hash in
their names (`convention_of`); other Caffe conversions need an explicit convention.
"""
import os
import re
from typing import Dict, Mapping, Optional

import numpy as np

from jaxstyle import vgg
from jaxstyle.errors import WeightsError
from pretrained import check
from pretrained import converted

CONVENTION = "torchvision"
# torch.hub names files `<name>-<first 8 hex digits of their sha256>.pth`.
FILES = {16: "vgg16-397923af.pth", 19: "vgg19-dcbb9e9d.pth"}
CAFFE_FILES = {16: "vgg16-00b39a1b.pth", 19: "vgg19-d01eb7cb.pth"}
_FEATURE_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")


def feature_indices(depth: int) -> Dict[str, int]:
  """{'conv1_1': 0, 'conv1_2': 2, 'conv2_1': 5, ...}: conv indices in torchvision `features`."""
  out, index = {}, 0
  for b, n in enumerate(vgg.BLOCKS[depth], start=1):
    for i in range(1, n + 1):
      out[f"conv{b}_{i}"] = index
      index += 2  # conv, ReLU
    index += 1  # pool
  return out


def convention_of(path: str) -> str:
  """'caffe' for the files in `CAFFE_FILES` (by the hash in their name), else 'torchvision'."""
  m = re.search(r"-([0-9a-f]{8,})\.pth$", os.path.basename(path))
  caffe = {re.search(r"-([0-9a-f]{8})\.pth$", name).group(1) for name in CAFFE_FILES.values()}
  return "caffe" if m and m.group(1)[:8] in caffe else CONVENTION


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise WeightsError("reading .pth weights needs PyTorch (pip install torch); or convert the "
                       "file elsewhere with pretrained/convert.py and pass the .msgpack") from None
  return torch


def to_numpy(value):
  """A tensor or array-like as a NumPy array; ragged nested lists stay as they are (and are then
  reported as mis-shaped by `check.require_exact`)."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if not value.dtype.is_floating_point:
      return value.numpy()
    return value.float().numpy()
  try:
    return np.asarray(value)
  except ValueError:
    return value


def _unwrap(sd):
  # Training scripts often save {'state_dict': ...} and DataParallel prefixes 'module.'.
  if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
    sd = sd["state_dict"]
  if isinstance(sd, Mapping) and sd and all(str(k).startswith("module.") for k in sd):
    sd = {str(k)[len("module."):]: v for k, v in sd.items()}
  return sd


def infer_depth(state_dict: Mapping[str, object]) -> Optional[int]:
  """16 or 19 from the number of `features.N.weight` convolutions, or None if neither."""
  convs = [k for k in state_dict if _FEATURE_KEY.match(str(k)) and str(k).endswith(".weight")]
  return {13: 16, 16: 19}.get(len(convs))


def convert_state_dict(state_dict: Mapping[str, object], depth: Optional[int] = None,
                       source: str = "state dict") -> dict:
  """Maps a torchvision VGG state dict to `{'conv1_1': {'kernel': HWIO, 'bias': (C,)}, ...}`.

  Args:
    state_dict: `features.N.weight` (OIHW) / `features.N.bias` tensors or arrays; `classifier.*`
      entries are ignored.
    depth: 16 or 19; None infers it from the number of convolutions.
    source: name used in error messages.

  Raises:
    WeightsError: not a VGG state dict, another depth than `depth`, or missing, extra or mis-shaped
      entries (named).
  """
  state_dict = _unwrap(state_dict)
  if not isinstance(state_dict, Mapping):
    raise WeightsError(f"{source} is not a state dict (got {type(state_dict).__name__})")
  inferred = infer_depth(state_dict)
  if depth is not None and inferred is not None and inferred != depth:
    raise WeightsError(f"{source} holds VGG{inferred} weights, expected VGG{depth}")
  depth = depth or inferred
  if depth is None:
    convs = sum(1 for k in state_dict if _FEATURE_KEY.match(str(k)) and str(k).endswith("weight"))
    raise WeightsError(f"{source} is not a torchvision VGG16/19 state dict: found {convs} "
                       "features.N.weight entries (VGG16 has 13, VGG19 16)")
  entries = {str(k): v for k, v in state_dict.items() if not str(k).startswith("classifier.")}
  want, where = {}, {}
  for layer, leaves in vgg.param_shapes(depth).items():
    index = feature_indices(depth)[layer]
    kh, kw, cin, cout = leaves["kernel"]
    want[f"features.{index}.weight"] = (cout, cin, kh, kw)
    want[f"features.{index}.bias"] = leaves["bias"]
    where[layer] = index
  entries = {k: to_numpy(v) if k in want else v for k, v in entries.items()}
  check.require_exact(entries, want, source, f"torchvision VGG{depth}")
  return {layer: {"kernel": np.transpose(entries[f"features.{i}.weight"], (2, 3, 1, 0)).astype(
                      np.float32),
                  "bias": entries[f"features.{i}.bias"].astype(np.float32)}
          for layer, i in where.items()}


def load_state_dict(path: str):
  """`torch.load` of a `.pth` file on the CPU, with one-line WeightsErrors for bad files."""
  torch = _torch()
  if not os.path.isfile(path):
    raise WeightsError(f"weights file {path} does not exist")
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (pickle/zip errors of every kind)
    text = str(e)
    if "Unsupported global" in text:
      raise WeightsError(f"{path} holds pickled Python objects, not only tensors (a whole model?); "
                         "save model.state_dict() instead") from None
    # torch wraps the real reason in a long weights_only explanation: keep only the reason.
    reason = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
    reason = reason[0].strip() if reason and reason[0].strip() else type(e).__name__
    raise WeightsError(f"{path} is not a readable PyTorch weights file (corrupt or truncated?): "
                       f"{reason[:120]}") from None


def hub_dir() -> str:
  """torch.hub's checkpoint folder: `$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/...`."""
  torch_home = os.environ.get("TORCH_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
  return os.path.join(os.path.expanduser(torch_home), "hub", "checkpoints")


def locate(depth: int, cache_dir: str) -> str:
  """Finds torchvision's VGG`depth` file in the jaxstyle cache or torch.hub's folder.

  Raises:
    WeightsError: the file is in neither place (there is no download: say where to put it).
  """
  name = FILES[depth]
  candidates = [os.path.join(cache_dir, name), os.path.join(hub_dir(), name)]
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise WeightsError(
      f"torchvision VGG{depth} weights {name} not found; download "
      f"https://download.pytorch.org/models/{name} and put it in {candidates[0]} or "
      f"{candidates[1]}")


def check_hub_hash(path: str):
  """torch.hub files carry the first 8 hex digits of their sha256 in the name: verify them."""
  m = re.search(r"-([0-9a-f]{8,})\.pth$", os.path.basename(path))
  if m:
    digest = converted.sha256_file(path)
    if not digest.startswith(m.group(1)):
      raise WeightsError(f"{path} is damaged: its sha256 {digest[:12]}... does not start with "
                         f"{m.group(1)} as its name says")
