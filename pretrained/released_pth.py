"""Released PyTorch feed-forward models -> jaxstyle parameters.

* johnson: pytorch/examples `fast_neural_style` models (`candy.pth`, `mosaic.pth`,
  `rain_princess.pth`, `udnie.pth`, and anything its `neural_style.py train` saved). Their
  `TransformerNet` is `jaxstyle.methods.johnson.TransformerNet` with a linear output, on RGB 0-255.
* msgnet: PyTorch-Multi-Style-Transfer's `21styles.model` (and `main.py train` snapshots). Its `Net`
  is `jaxstyle.methods.msgnet.MSGNet` with no output offset, on BGR 0-255.

Both releases predate PyTorch 0.4, whose InstanceNorm2d stopped keeping running statistics; loading
them into a newer PyTorch fails on those buffers (pytorch/examples, MSG-Net issues #21, #25, #32).
Instance norm normalises with each image's own statistics, and the reference scripts delete the
buffers before loading, so they are dropped here too. Widths and block counts are read off the
file; every other key must be exactly the network's, with the network's shapes.
"""
import re
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxstyle.errors import WeightsError
from jaxstyle.methods.johnson.model import JohnsonConfig, TransformerNet
from jaxstyle.methods.msgnet.model import MSGNet, MSGNetConfig
from pretrained import check

_UNUSED = re.compile(r"\.(running_mean|running_var|num_batches_tracked)$")
_PROBE = 16  # image side for the shape-only init


def _plain(state_dict: Any, source: str, what: str) -> Dict[str, Any]:
  """The state dict's tensors as NumPy arrays by key, minus the unused norm buffers."""
  from pretrained import torchvision_pth  # pylint: disable=g-import-not-at-top  (cycle)
  state_dict = torchvision_pth._unwrap(state_dict)  # pylint: disable=protected-access
  if not isinstance(state_dict, Mapping):
    raise WeightsError(f"{source} is not a {what} state dict (a {type(state_dict).__name__})")
  return {str(k): torchvision_pth.to_numpy(v) for k, v in state_dict.items()
          if not _UNUSED.search(str(k))}


def _torch_shape(leaf: str, shape: tuple) -> tuple:
  if leaf == "kernel":  # HWIO -> OIHW
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == "weight":  # CoMatch: the reference keeps a leading batch axis of 1
    return (1,) + tuple(shape)
  return tuple(shape)


def _torch_value(leaf: str, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if leaf == "kernel":
    return np.ascontiguousarray(np.transpose(value, (2, 3, 1, 0)))
  if leaf == "weight":
    return value[0]
  return value


def _leaf_key(prefix: str, leaf: str) -> str:
  # Flax norms call their scale `scale`, PyTorch's `weight`; CoMatch's matrix is the prefix itself.
  return {"kernel": f"{prefix}.weight", "scale": f"{prefix}.weight", "bias": f"{prefix}.bias",
          "weight": prefix}[leaf]


def _gather(entries: Dict[str, Any], modules: Dict[str, str], shapes: Any, source: str,
            what: str) -> dict:
  """Flax params `shapes` (a tree of ShapeDtypeStructs) filled from `entries` via `modules`
  ({flax module path 'a/b/c': torch key prefix}), after an exact check of keys and shapes."""
  flat = traverse_util.flatten_dict(shapes)
  keys, want = {}, {}
  for path, leaf_shape in flat.items():
    module, leaf = "/".join(path[:-1]), path[-1]
    key = _leaf_key(modules[module], leaf)
    keys[path] = key
    want[key] = _torch_shape(leaf, leaf_shape.shape)
  check.require_exact(entries, want, source, what)
  return traverse_util.unflatten_dict(
      {path: _torch_value(path[-1], entries[key]) for path, key in keys.items()})


def _shapes(model, *args) -> Any:
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args))["params"]


# --------------------------------------------------------------------------------------------------
# pytorch/examples fast_neural_style


def is_johnson(state_dict: Mapping[str, Any]) -> bool:
  return isinstance(state_dict, Mapping) and "conv1.conv2d.weight" in state_dict \
      and "deconv3.conv2d.weight" in state_dict


def convert_johnson(state_dict: Mapping[str, Any], source: str = "state dict"
                    ) -> Tuple[dict, JohnsonConfig]:
  """(params, config) of `TransformerNet` from a pytorch/examples fast_neural_style state dict."""
  what = "pytorch/examples fast_neural_style TransformerNet"
  entries = _plain(state_dict, source, what)
  if not is_johnson(entries):
    raise WeightsError(f"{source} is not a {what} (no conv1.conv2d / deconv3.conv2d weights)")
  c1 = np.shape(entries["conv1.conv2d.weight"])[0]
  blocks = {int(m.group(1)) for m in map(re.compile(r"^res(\d+)\.").match, entries) if m}
  config = JohnsonConfig(width=c1 / 32, num_residual=len(blocks), output="linear")
  modules = {"conv1_conv/conv": "conv1.conv2d", "conv1_norm": "in1",
             "conv2_conv/conv": "conv2.conv2d", "conv2_norm": "in2",
             "conv3_conv/conv": "conv3.conv2d", "conv3_norm": "in3",
             "up1_conv/conv_layer/conv": "deconv1.conv2d", "up1_norm": "in4",
             "up2_conv/conv_layer/conv": "deconv2.conv2d", "up2_norm": "in5",
             "out_conv/conv": "deconv3.conv2d"}
  for i in range(1, config.num_residual + 1):
    for j in (1, 2):
      modules[f"res{i}/conv{j}/conv"] = f"res{i}.conv{j}.conv2d"
      modules[f"res{i}/norm{j}"] = f"res{i}.in{j}"
  shapes = _shapes(TransformerNet(config), jnp.zeros((1, _PROBE, _PROBE, 3)))
  return _gather(entries, modules, shapes, source, what), config


# --------------------------------------------------------------------------------------------------
# PyTorch-Multi-Style-Transfer `Net`


def is_msgnet(state_dict: Mapping[str, Any]) -> bool:
  return isinstance(state_dict, Mapping) and any(
      str(k) in ("ins.weight", "model.1.weight") for k in state_dict)


def _canonical_msgnet(entries: Dict[str, Any], source: str) -> Dict[str, Any]:
  """Keys under `model.` only. `Net` registers its encoder and CoMatch twice (`model1.*` is
  `model.0.*`, `ins.weight` is `model.1.weight`), so its state dict names each tensor twice."""
  out = {}
  for key, value in entries.items():
    if key.startswith("model1."):
      twin = "model.0." + key[len("model1."):]
    elif key == "ins.weight":
      twin = "model.1.weight"
    else:
      out.setdefault(key, value)
      continue
    if twin in entries and not np.array_equal(np.asarray(entries[twin]), np.asarray(value)):
      raise WeightsError(f"{source}: {key} and {twin} should be the same tensor but differ")
    out.setdefault(twin, value)
  return out


def _bottleneck(flax: str, torch: str, up: bool = False, residual: bool = True) -> Dict[str, str]:
  """The reference Bottleneck / UpBottleneck: conv_block = [norm, relu, 1x1, norm, relu, 3x3 (a
  ConvLayer / UpsampleConvLayer), norm, relu, 1x1], plus a 1x1 `residual_layer`."""
  mid = "/conv_layer" if up else ""
  modules = {f"{flax}/conv1/conv": f"{torch}.conv_block.2",
             f"{flax}/conv2{mid}/conv": f"{torch}.conv_block.5.conv2d",
             f"{flax}/conv3/conv": f"{torch}.conv_block.8"}
  if residual:
    modules[f"{flax}/residual{mid}/conv"] = f"{torch}.residual_layer" + (".conv2d" if up else "")
  return modules


def convert_msgnet(state_dict: Mapping[str, Any], source: str = "state dict"
                   ) -> Tuple[dict, MSGNetConfig]:
  """(params, config) of `MSGNet` from a PyTorch-Multi-Style-Transfer `Net` state dict."""
  what = "PyTorch-Multi-Style-Transfer MSG-Net"
  entries = _plain(state_dict, source, what)
  if not is_msgnet(entries):
    raise WeightsError(f"{source} is not a {what} (no Inspiration weight ins.weight)")
  entries = _canonical_msgnet(entries, source)
  last = [int(m.group(1)) for m in map(re.compile(r"^model\.(\d+)\.conv2d\.weight$").match,
                                        entries) if m]
  stem, comatch = entries.get("model.0.0.conv2d.weight"), entries.get("model.1.weight")
  if not last or stem is None or comatch is None or np.ndim(comatch) != 3:
    raise WeightsError(f"{source} is not a {what}: no stem, Inspiration or output convolution")
  n_blocks = max(last) - 6  # model = [model1, ins, blocks..., up, up, norm, relu, conv]
  if n_blocks < 0 or np.shape(comatch)[-1] % 4:
    raise WeightsError(f"{source} is not a {what}: {n_blocks + 7} top-level modules, "
                       f"Inspiration width {np.shape(comatch)[-1]}")
  config = MSGNetConfig(ngf=np.shape(comatch)[-1] // 4, stem_features=np.shape(stem)[0],
                        n_blocks=n_blocks, output_offset=0.0)
  modules = {"encoder/stem/conv": "model.0.0.conv2d", "comatch": "model.1.weight",
             "decoder/out_conv/conv": f"model.{n_blocks + 6}.conv2d"}
  modules.update(_bottleneck("encoder/down1", "model.0.3"))
  modules.update(_bottleneck("encoder/down2", "model.0.4"))
  for i in range(n_blocks):
    modules.update(_bottleneck(f"decoder/block{i}", f"model.{i + 2}", residual=False))
  modules.update(_bottleneck("decoder/up1", f"model.{n_blocks + 2}", up=True))
  modules.update(_bottleneck("decoder/up2", f"model.{n_blocks + 3}", up=True))
  c = config.comatch_features
  shapes = _shapes(MSGNet(config), jnp.zeros((1, _PROBE, _PROBE, 3)), jnp.zeros((1, c, c)))
  return _gather(entries, modules, shapes, source, what), config
