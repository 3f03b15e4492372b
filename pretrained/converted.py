"""The converted weight file: one flax msgpack holding the parameters and how to feed them.

Layout: {'format': 'jaxstyle-vgg', 'version': 1, 'depth': 16|19, 'convention': 'caffe' or
'torchvision', 'source': str, 'params': {'conv1_1': {'kernel': HWIO, 'bias': (C,)}, ...}}.
Keeping the convention inside the file means a converted file can be copied anywhere and still
be loaded correctly.
"""
import hashlib
import os
import tempfile
from typing import Tuple

from flax import serialization

from jaxstyle import vgg
from jaxstyle.errors import WeightsError
from pretrained import check

FORMAT = "jaxstyle-vgg"
VERSION = 1


def to_bytes(params: dict, depth: int, convention: str, source: str = "") -> bytes:
  """Serialises checked `params` with their metadata."""
  if convention not in vgg.CONVENTIONS:
    raise WeightsError(f"unknown convention {convention!r}; expected one of {vgg.CONVENTIONS}")
  params = check.check_params(params, depth, source or "params")
  return serialization.msgpack_serialize({
      "format": FORMAT, "version": VERSION, "depth": int(depth), "convention": convention,
      "source": os.path.basename(source), "params": params})


def from_bytes(data: bytes, source: str) -> Tuple[dict, int, str]:
  """Returns (params, depth, convention) from `to_bytes` output, or raises WeightsError."""
  try:
    tree = serialization.msgpack_restore(data)
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises many types on bad bytes)
    raise WeightsError(
        f"{source} is not a readable msgpack weights file ({type(e).__name__})") from None
  if not isinstance(tree, dict) or tree.get("format") != FORMAT:
    raise WeightsError(f"{source} is not a jaxstyle converted VGG file (convert it with "
                       "pretrained/convert.py)")
  if tree.get("version") != VERSION:
    raise WeightsError(f"{source} has converted-file version {tree.get('version')!r}; "
                       f"this jaxstyle reads version {VERSION}")
  depth, convention = tree.get("depth"), tree.get("convention")
  if (not isinstance(depth, int) or depth not in vgg.BLOCKS
      or not isinstance(convention, str) or convention not in vgg.CONVENTIONS):
    raise WeightsError(f"{source} has bad metadata: depth={depth!r}, convention={convention!r}")
  return check.check_params(tree.get("params"), depth, source), int(depth), convention


def write_atomic(path: str, data: bytes):
  """Writes `data` to `path` through a temporary file in the same folder, then `os.replace`."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; caches may be shared
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def save(path: str, params: dict, depth: int, convention: str, source: str = "") -> bytes:
  """Writes a converted file atomically; returns its bytes (for hashing)."""
  data = to_bytes(params, depth, convention, source)
  write_atomic(path, data)
  return data


def load(path: str) -> Tuple[dict, int, str]:
  """Reads a converted file: (params as float32 NumPy, depth, convention)."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise WeightsError(f"cannot read weights {path}: {e.strerror}") from None
  return from_bytes(data, path)


def sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
  """Hex sha256 of a file, read in 1 MiB chunks (torchvision files are 0.5 GB)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()
