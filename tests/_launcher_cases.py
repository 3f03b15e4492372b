"""The launcher-driving harness of `test_bad_inputs.py`: a driver process, result checks, inputs.

Run as a script (`python tests/_launcher_cases.py <launcher> <cases.json> <results.json>`) it is the
driver: it runs each case's argv through the launcher's real `main` via `launch.common.run`, with
stdout/stderr captured at the file-descriptor level, so that one process pays the JAX import and
the compiled programs for all the cases of a launcher.
"""
import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import traceback
import zlib

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = {"stylize": "launch.stylize", "train": "launch.train", "convert": "pretrained.convert"}

# --------------------------------------------------------------------------------------------------
# The driver: `python tests/_launcher_cases.py <launcher> <cases.json> <results.json>`


@contextlib.contextmanager
def _capture_fds(directory):
  """Redirects fds 1 and 2 (Python, absl and C++ logs alike) to files; yields {fd: text} on exit."""
  out = {}
  files = {fd: tempfile.TemporaryFile(mode="w+b", dir=directory) for fd in (1, 2)}
  saved = {fd: os.dup(fd) for fd in files}
  sys.stdout.flush()
  sys.stderr.flush()
  for fd, f in files.items():
    os.dup2(f.fileno(), fd)
  try:
    yield out
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, f in files.items():
      os.dup2(saved[fd], fd)
      os.close(saved[fd])
      f.seek(0)
      out[fd] = f.read().decode("utf-8", "replace")
      f.close()


def _drive(launcher, cases_path, results_path):
  sys.path.insert(0, ROOT)
  import importlib  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from launch import common  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(LAUNCHERS[launcher])
  results = {}
  with open(cases_path) as f:
    cases = json.load(f)
  unraisablehook = sys.unraisablehook
  for name, case in cases.items():
    sys.unraisablehook = unraisablehook  # common.fail silences it for the rest of the process
    flags.FLAGS.unparse_flags()
    sys.argv = [module.__file__] + case["args"]
    os.chdir(case["cwd"])
    with _capture_fds(case["cwd"]) as out:
      try:
        common.run(module.main)
        rc = 0
      except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except Exception:  # pylint: disable=broad-except  as the interpreter would report it
        traceback.print_exc()
        rc = 1
    results[name] = {"rc": rc, "stdout": out[1], "stderr": out[2]}
  with open(results_path, "w") as f:
    json.dump(results, f)


# --------------------------------------------------------------------------------------------------
# Running cases and checking them


def env_for(tmp):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAXSTYLE_CACHE=os.path.join(tmp, "cache"), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             JAX_COMPILATION_CACHE_DIR=os.path.join(tmp, "xla_cache"), PYTHONUNBUFFERED="1",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  return env


def start_batch(launcher, cases, tmp):
  """Starts the driver on `{name: {'args', 'cwd'}}`; returns a function waiting for the results."""
  cases_path = os.path.join(tmp, f"{launcher}_cases.json")
  results_path = os.path.join(tmp, f"{launcher}_results.json")
  with open(cases_path, "w") as f:
    json.dump(cases, f)
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), launcher, cases_path,
                           results_path], env=env_for(tmp), cwd=tmp, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)

  def wait():
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, f"{launcher} driver failed:\n{log[-3000:]}"
    with open(results_path) as f:
      return json.load(f)
  return wait


def run_each(launcher, cases, tmp, parallel=3):
  """Runs every case as its own `python <launcher script>` process: exit-time output included."""
  script = os.path.join(ROOT, *LAUNCHERS[launcher].split(".")) + ".py"
  results, pending = {}, list(cases.items())
  while pending:
    batch, pending = pending[:parallel], pending[parallel:]
    procs = {name: subprocess.Popen([sys.executable, script] + case["args"], env=env_for(tmp),
                                    cwd=case["cwd"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, case in batch}
    for name, proc in procs.items():
      out, err = proc.communicate(timeout=900)
      results[name] = {"rc": proc.returncode, "stdout": out, "stderr": err}
  return results


def snapshot(path):
  """Every file and folder under `path` with size and mtime (None when `path` does not exist)."""
  if not os.path.exists(path):
    return None
  if os.path.isfile(path):
    st = os.stat(path)
    return {".": (st.st_size, st.st_mtime_ns)}
  found = {}
  for dirpath, dirnames, filenames in os.walk(path):
    for name in dirnames + filenames:
      full = os.path.join(dirpath, name)
      st = os.stat(full)
      found[os.path.relpath(full, path)] = (st.st_size if name in filenames else -1, st.st_mtime_ns)
  return found


DATA_WARNING = "skipping unreadable image"


def check_error(name, result, match, before, after):
  """An error case: exit 2, stderr exactly one `error:` line containing `match`, nothing written."""
  problems = []
  # The data pipeline warns once per unreadable training file: information, not noise.
  lines = [l for l in result["stderr"].splitlines() if l.strip() and DATA_WARNING not in l]
  if result["rc"] != 2:
    problems.append(f"exit code {result['rc']}, expected 2")
  if len(lines) != 1 or not lines[0].startswith("error: "):
    problems.append("stderr is not exactly one `error:` line")
  elif match not in lines[0]:
    problems.append(f"error line does not mention {match!r}")
  if "Traceback" in result["stderr"] + result["stdout"]:
    problems.append("a Traceback was printed")
  if before != after:
    before, after = before or {}, after or {}
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    problems.append(f"the output location changed: {changed[:10]}")
  if problems:
    return f"{name}: {'; '.join(problems)}\n  stderr: {result['stderr'][-1500:]!r}"
  return None


def check_ok(name, result):
  """A case that must work: exit 0, no error line, no Traceback."""
  if result["rc"] != 0 or "Traceback" in result["stderr"] or "error:" in result["stderr"]:
    return f"{name}: rc={result['rc']} stderr={result['stderr'][-2000:]!r}"
  return None


# --------------------------------------------------------------------------------------------------
# Inputs


def png_header_only(path, w, h):
  """A valid PNG header claiming w x h pixels with almost no data: a decompression bomb."""
  def chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
  ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
            + chunk(b"IEND", b""))


def make_inputs(d):
  """Writes every odd input under `d`; returns {name: path}."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  import h5py  # pylint: disable=g-import-not-at-top
  from jaxstyle import vgg  # pylint: disable=g-import-not-at-top
  from pretrained import converted  # pylint: disable=g-import-not-at-top
  names = ("w16.msgpack", "w19.msgpack", "noise.msgpack", "noise.bin", "cut.msgpack",
           "partial.msgpack", "empty.h5", "notes.pth", "rgb.png", "gray.png", "pal.png", "rgba.png",
           "cmyk.jpg", "g16.png", "exif.jpg", "one.png", "anim.gif", "mask.png", "bomb.png",
           "empty.png", "cut.png", "notes.jpg", "file.txt", "thin.png")
  p = {k: os.path.join(d, "in", k) for k in names}
  p["bad_only"] = os.path.join(d, "in", "bad_only")
  os.makedirs(p["bad_only"])
  os.makedirs(os.path.join(d, "in", "folder.png"))
  p["folder.png"] = os.path.join(d, "in", "folder.png")
  w16 = converted.save(p["w16.msgpack"], vgg.init_params(0, 16), 16, "caffe", "random-vgg16")
  converted.save(p["w19.msgpack"], vgg.init_params(0, 19), 19, "caffe", "random-vgg19")
  rng = np.random.default_rng(0)
  with open(p["noise.msgpack"], "wb") as f:
    f.write(rng.bytes(4096))
  with open(p["noise.bin"], "wb") as f:
    f.write(b"\x00\x01" + rng.bytes(4096))
  with open(p["cut.msgpack"], "wb") as f:
    f.write(w16[:200_000])
  partial = {"format": "jaxstyle-vgg", "version": 1, "depth": 16, "convention": "caffe",
             "source": "x", "params": {"conv1_1": {"kernel": np.zeros((3, 3, 3, 64), np.float32),
                                                   "bias": np.zeros(64, np.float32)}}}
  with open(p["partial.msgpack"], "wb") as f:
    f.write(serialization.msgpack_serialize(partial))
  h5py.File(p["empty.h5"], "w").close()
  # Smooth content, so resizing it is well defined and a reference resize agrees closely.
  y, x = np.mgrid[0:40, 0:48].astype(np.float32)
  rgb = np.stack([x / 47, y / 39, 0.5 + 0.4 * np.sin(x / 6)], -1)
  rgb = (rgb * 255).round().astype(np.uint8)
  Image.fromarray(rgb).save(p["rgb.png"])
  Image.fromarray(rgb[..., 0], "L").save(p["gray.png"])
  Image.fromarray(rgb).quantize(16).save(p["pal.png"], transparency=0)
  alpha = np.where(x < 24, 255, 80).astype(np.uint8)
  Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p["rgba.png"])
  Image.fromarray(rgb).convert("CMYK").save(p["cmyk.jpg"], quality=98)
  Image.fromarray((y * 1500 + x * 100).astype(np.uint16)).save(p["g16.png"])
  # Stored portrait (48 tall, 40 wide), EXIF orientation 6 says "rotate 90 degrees clockwise".
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(p["exif.jpg"], exif=exif, quality=98)
  Image.fromarray(np.array([[[200, 30, 90]]], np.uint8)).save(p["one.png"])
  Image.fromarray(rng.integers(0, 255, (3, 600, 3), np.uint8)).save(p["thin.png"])  # 200:1
  frames = [Image.fromarray(np.roll(rgb, 8 * i, axis=1)).convert("P") for i in range(3)]
  frames[0].save(p["anim.gif"], save_all=True, append_images=frames[1:])
  Image.fromarray(rgb[..., 1], "L").save(p["mask.png"])
  png_header_only(p["bomb.png"], 15000, 15000)
  open(p["empty.png"], "wb").close()
  with open(p["rgb.png"], "rb") as f:
    data = f.read()
  with open(p["cut.png"], "wb") as f:
    f.write(data[: len(data) // 2])
  with open(p["notes.jpg"], "w") as f:
    f.write("not an image\n")
  with open(p["notes.pth"], "w") as f:
    f.write("not a torch file\n")
  with open(p["file.txt"], "w") as f:
    f.write("x")
  for name in ("empty.png", "cut.png", "notes.jpg"):
    with open(p[name], "rb") as src, open(os.path.join(p["bad_only"], name), "wb") as dst:
      dst.write(src.read())
  return p


def reference_rgb(path):
  """A content file decoded independently of jaxstyle: [H, W, 3] in [0, 1]."""
  im = Image.open(path)
  if im.mode.startswith("I;16"):
    g = np.asarray(im, np.float64) / 65535.0
    return np.repeat(g[..., None], 3, -1)
  if im.mode in ("RGBA", "P"):
    rgba = np.asarray(im.convert("RGBA"), np.float64) / 255.0
    return rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
  arr = np.asarray(im.convert("RGB"), np.float64) / 255.0
  if im.getexif().get(0x0112) == 6:
    arr = np.rot90(arr, -1)
  return arr


def resized(arr, hw):
  chans = [np.asarray(Image.fromarray(arr[..., c].astype(np.float32), "F").resize(
      (hw[1], hw[0]), Image.Resampling.LANCZOS)) for c in range(3)]
  return np.clip(np.stack(chans, -1), 0, 1)


if __name__ == "__main__":
  _drive(*sys.argv[1:4])
