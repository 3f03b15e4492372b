"""The released pytorch-AdaIN files (`vgg_normalised.pth`, `decoder.pth`) -> jaxstyle parameters.

naoto0804/pytorch-AdaIN keeps both networks as bare `nn.Sequential`s, so their state dicts are
keyed by module index (`'0.weight'`, `'2.weight'`, ...), with reflection pads, ReLUs, pools and
upsamplings in between holding no parameters. The convolutions are therefore found by order and
checked by shape:

* `vgg_normalised.pth`: a 1x1 3->3 convolution (the Caffe preprocessing of RGB [0, 1] input:
  x255, RGB->BGR, minus the mean), then the 16 3x3 convolutions of VGG19 (Gatys' rescaled
  "normalised" weights). The 1x1 map is folded into conv1_1 relative to a jaxstyle input convention,
  which is exact under reflection padding (AdaIN's encoder) and, because the released 1x1 is the
  Caffe preprocessing itself, under any padding for the 'caffe' convention.
* `decoder.pth` (and the training snapshots `iter_N.pth`): the 9 convolutions of AdaIN's VGG19
  decoder, which map one to one onto `jaxstyle.methods.adain.model.Decoder(depth=19)`.
"""
import re
from typing import Dict, List, Mapping, Tuple

import numpy as np

from jaxstyle import vgg
from jaxstyle.errors import WeightsError

_INDEX_KEY = re.compile(r"^(\d+)\.(weight|bias)$")
# Decoder(depth=19)'s convolutions in the order the reference Sequential applies them.
DECODER_LAYERS = ("conv4_1", "conv3_4", "conv3_3", "conv3_2", "conv3_1", "conv2_2", "conv2_1",
                  "conv1_2", "conv1_1")


def _indexed_convs(state_dict: Mapping[str, object], source: str) -> List[Tuple[np.ndarray,
                                                                                np.ndarray]]:
  """(OIHW weight, bias) of every `N.weight`/`N.bias` pair, in module order."""
  from pretrained import torchvision_pth  # pylint: disable=g-import-not-at-top  (cycle)
  found: Dict[int, dict] = {}
  for key, value in state_dict.items():
    m = _INDEX_KEY.match(str(key))
    if not m:
      raise WeightsError(f"{source} is not a pytorch-AdaIN Sequential: unexpected key {key!r}")
    found.setdefault(int(m.group(1)), {})[m.group(2)] = torchvision_pth.to_numpy(value)
  convs = []
  for index in sorted(found):
    entry = found[index]
    arrays = set(entry) == {"weight", "bias"} and all(
        isinstance(v, np.ndarray) and v.dtype.kind in "fiu" for v in entry.values())
    if not arrays or entry["weight"].ndim != 4 or entry["bias"].ndim != 1:
      raise WeightsError(f"{source}: module {index} is not a convolution with a bias")
    weight, bias = entry["weight"].astype(np.float32), entry["bias"].astype(np.float32)
    if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
      raise WeightsError(f"{source}: module {index} has non-finite values")
    convs.append((weight, bias))
  return convs


def is_vgg_normalised(state_dict: Mapping[str, object]) -> bool:
  """Whether a state dict has the normalised VGG's layout (index keys, a 1x1 3->3 conv first)."""
  first = state_dict.get("0.weight") if isinstance(state_dict, Mapping) else None
  return first is not None and tuple(getattr(first, "shape", ())) == (3, 3, 1, 1)


def _affine_of(convention: str) -> Tuple[np.ndarray, np.ndarray]:
  """`(S, m)` with `vgg.preprocess(x, convention) = S @ x + m` for RGB pixels x."""
  basis = np.concatenate([np.zeros((1, 3)), np.eye(3)]).astype(np.float32)
  p = np.asarray(vgg.preprocess(basis, convention), np.float64)
  return (p[1:] - p[0]).T, p[0]


def convert_vgg_normalised(state_dict: Mapping[str, object], convention: str = "caffe",
                           source: str = "state dict") -> dict:
  """VGG19 parameters for `convention` input from a `vgg_normalised.pth` state dict.

  The file's 1x1 convolution `z = A x + b` (x: RGB in [0, 1]) is rewritten for the convention's
  input `p = S x + m` as `z = A S^-1 p + (b - A S^-1 m)` and folded into conv1_1's kernel and bias.
  """
  convs = _indexed_convs(state_dict, source)
  shapes = vgg.param_shapes(19)
  if len(convs) != 1 + len(shapes):
    raise WeightsError(f"{source} has {len(convs)} convolutions; the normalised VGG19 has "
                       f"{1 + len(shapes)} (a 1x1 preprocessing one, then 16)")
  (w0, b0), convs = convs[0], convs[1:]
  if w0.shape != (3, 3, 1, 1):
    raise WeightsError(f"{source}: the first convolution is {w0.shape}, expected a 1x1 3->3 one")
  params = {}
  for (weight, bias), (layer, want) in zip(convs, shapes.items()):
    kernel = np.transpose(weight, (2, 3, 1, 0))
    if kernel.shape != tuple(want["kernel"]) or bias.shape != tuple(want["bias"]):
      raise WeightsError(f"{source}: {layer} has shape {weight.shape}, expected "
                         f"{tuple(want['kernel'][i] for i in (3, 2, 0, 1))}")
    params[layer] = {"kernel": kernel, "bias": bias}
  s, m = _affine_of(convention)
  a = w0[:, :, 0, 0].astype(np.float64) @ np.linalg.inv(s)  # z = a @ p + c
  c = b0.astype(np.float64) - a @ m
  k = params["conv1_1"]["kernel"].astype(np.float64)  # [3, 3, 3 (z), 64]
  params["conv1_1"] = {
      "kernel": np.einsum("hwio,ij->hwjo", k, a).astype(np.float32),
      "bias": (params["conv1_1"]["bias"] + np.einsum("hwio,i->o", k, c)).astype(np.float32)}
  return params


def convert_decoder(state_dict: Mapping[str, object], channels=(64, 128, 256),
                    source: str = "state dict") -> dict:
  """`Decoder(channels, depth=19)` parameters from a pytorch-AdaIN `decoder.pth` state dict."""
  if isinstance(state_dict, Mapping) and is_vgg_normalised(state_dict):
    raise WeightsError(f"{source} is the encoder (vgg_normalised.pth), not a decoder")
  convs = _indexed_convs(state_dict, source)
  if len(convs) != len(DECODER_LAYERS):
    raise WeightsError(f"{source} has {len(convs)} convolutions; AdaIN's VGG19 decoder has "
                       f"{len(DECODER_LAYERS)}")
  c1, c2, c3 = channels
  outs = (c3, c3, c3, c3, c2, c2, c1, c1, 3)
  ins = (512,) + outs[:-1]
  params = {}
  for (weight, bias), layer, cin, cout in zip(convs, DECODER_LAYERS, ins, outs):
    if weight.shape != (cout, cin, 3, 3) or bias.shape != (cout,):
      raise WeightsError(f"{source}: {layer} has shape {weight.shape}, expected "
                         f"{(cout, cin, 3, 3)}")
    params[layer] = {"conv": {"kernel": np.transpose(weight, (2, 3, 1, 0)), "bias": bias}}
  return params
