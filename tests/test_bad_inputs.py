"""Bad and odd inputs to every launcher: a correct result, or `error: ...` + exit 2, never a crash.

Each case runs a launcher's real `main` through `launch.common.run` (the same path as `python
launch/<x>.py`) with its stdout/stderr captured at the file-descriptor level. Cases of one launcher
share one subprocess (this file run as a script), so the JAX import and the compiled programs are
paid once; the training runs further down are separate processes. The loss network is a random
full-size VGG16 converted to msgpack (no download). Checked for every case: exit code; for errors,
stderr is exactly one `error: ...` line naming the problem; no Traceback; and the case's output
folder is unchanged (no partial file, no temp file, no new folder) or holds exactly the result.
"""
import contextlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import traceback
import zlib

import jax
import numpy as np
from PIL import Image
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = {"stylize": "launch.stylize", "train": "launch.train", "convert": "pretrained.convert"}
FAST = ["--size=32", "--steps=2", "--optimizer=adam", "--learning_rate=1e-6",
        "--set=content_layers=relu2_2", "--set=style_layers=relu1_1,relu2_1"]
# A 4k-parameter Johnson net whose loss stops at relu2_2: the cheapest real training run.
JOHNSON_TINY = ["--method=johnson", "--image_size=32", "--batch_size=2", "--set=width=0.125",
                "--set=num_residual=1", "--set=style_size=32", "--set=content_layers=relu2_2",
                "--set=style_layers=relu1_2,relu2_2"]


# --------------------------------------------------------------------------------------------------
# The driver: `python tests/test_bad_inputs.py <launcher> <cases.json> <results.json>`


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
           "empty.png", "cut.png", "notes.jpg", "file.txt")
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



# --------------------------------------------------------------------------------------------------
# The tables: (name, args, expected) with expected = ("error", text in the message, watched path)
# or ("ok", output file, expected [H, W, 3], reference content file or None).


def _readonly_dir(d):
  """A folder nobody may write to: root ignores permission bits, so it gets /sys."""
  if os.geteuid() == 0:
    return "/sys"
  path = os.path.join(d, "readonly")
  os.makedirs(path, exist_ok=True)
  os.chmod(path, 0o555)
  return path


def stylize_table(p, d):
  ro = _readonly_dir(d)
  out = lambda name: os.path.join(d, "out", name, "result.png")  # noqa: E731
  for name in ("exists", "exists_overwrite"):
    os.makedirs(os.path.dirname(out(name)), exist_ok=True)
    Image.new("RGB", (5, 5)).save(out(name))
  os.makedirs(out("isdir"))
  rows = [  # (name, {flag: value} over the defaults, expected)
      ("missing", {"content": "/nonexistent/photo.png"}, "does not exist"),
      ("empty", {"content": p["empty.png"]}, "is empty"),
      ("truncated", {"content": p["cut.png"]}, "corrupt or truncated"),
      ("text_as_jpg", {"style": p["notes.jpg"]}, "not an image"),
      ("folder_as_image", {"content": p["folder.png"]}, "is a directory"),
      ("bomb", {"style": p["bomb.png"]}, "pixels"),
      ("missing_style", {"style": "/nonexistent/style.jpg"}, "does not exist"),
      ("weights_noise", {"weights": p["noise.msgpack"]}, "noise.msgpack"),
      ("weights_unknown_format", {"weights": p["noise.bin"]}, "cannot tell the format"),
      ("weights_truncated", {"weights": p["cut.msgpack"]}, "cut.msgpack"),
      ("weights_incomplete", {"weights": p["partial.msgpack"]}, "conv1_2"),
      ("weights_text_pth", {"weights": p["notes.pth"]}, "notes.pth"),
      ("weights_empty_h5", {"weights": p["empty.h5"]}, "empty.h5"),
      ("weights_folder", {"weights": p["folder.png"]}, "is a directory"),
      ("weights_missing", {"weights": "/nonexistent/vgg.msgpack"}, "unknown weights"),
      ("unknown_method", {"method": "nope"}, "unknown method 'nope'"),
      ("negative_size", {"size": "-5"}, "--size must be positive"),
      ("zero_steps", {"steps": "0"}, "--steps must be positive"),
      ("size_not_a_number", {"size": "big"}, "--size=big"),
      ("unknown_flag", {"colour": "red"}, "colour"),
      ("bad_enum", {"optimizer": "sgd"}, "--optimizer=sgd"),
      ("negative_lr", {"learning_rate": "-1"}, "--learning_rate must be positive"),
      ("alpha_range", {"alpha": "1.5"}, "--alpha must be in [0, 1]"),
      ("mask_count", {"mask": p["mask.png"], "+style": p["gray.png"]}, "--mask given 1 times"),
      ("mask_bad_file", {"mask": p["cut.png"]}, "corrupt or truncated"),
      ("style_weights_count", {"style_weights": "1,2"}, "--style_weights has 2 values for 1"),
      ("style_weights_text", {"style_weights": "heavy"}, "--style_weights must be numbers"),
      ("style_weights_zero", {"style_weights": "0"}, "not all zero"),
      ("texture_feedforward", {"method": "johnson", "content": ""}, "needs a --content image"),
      ("johnson_no_checkpoint", {"method": "johnson"}, "needs --checkpoint"),
      ("checkpoint_missing", {"method": "adain", "checkpoint": "/nonexistent/run"},
       "does not exist"),
      ("init_missing", {"init": "/nonexistent/start.png"}, "--init must be"),
      ("style_index_text", {"style_index": "first"}, "--style_index must be integers"),
      ("exists", {"overwrite": False}, "exists (pass --overwrite"),
      ("isdir", {}, "is a directory"),
      ("readonly_dir", {"output": os.path.join(ro, "result.png")}, "not writable"),
      ("readonly_parent", {"output": os.path.join(ro, "new", "result.png")}, "not writable"),
      ("parent_is_file", {"output": os.path.join(p["file.txt"], "result.png")},
       "is not a directory"),
      ("bad_suffix", {"output": os.path.join(d, "out", "bad_suffix", "result.gif")},
       "must end in one of"),
      ("stray_argument", {"+": "photo.jpg"}, "unexpected arguments: photo.jpg"),
      ("set_unknown_key", {"set": "style_wieght=3"}, "unknown setting 'style_wieght'"),
      ("set_bad_value", {"set": "style_weight=lots"}, "bad value 'lots'"),
      ("set_no_equals", {"set": "style_weight"}, "--set expects key=value"),
  ]
  ok = [  # (name, {flag: value}, reference content, expected shape)
      ("gray", {"content": p["gray.png"]}, p["gray.png"], (27, 32, 3)),
      ("palette", {"content": p["pal.png"]}, p["pal.png"], (27, 32, 3)),
      ("rgba", {"content": p["rgba.png"]}, p["rgba.png"], (27, 32, 3)),
      ("cmyk", {"content": p["cmyk.jpg"]}, p["cmyk.jpg"], (27, 32, 3)),
      ("sixteen_bit", {"content": p["g16.png"]}, p["g16.png"], (27, 32, 3)),
      ("exif_rotated", {"content": p["exif.jpg"]}, p["exif.jpg"], (27, 32, 3)),
      ("one_pixel_content", {"content": p["one.png"]}, None, (32, 32, 3)),
      ("one_pixel_style", {"style": p["one.png"]}, p["rgb.png"], (27, 32, 3)),
      ("animated_gif", {"style": p["anim.gif"], "+style": p["cmyk.jpg"], "style_weights": "3,1"},
       p["rgb.png"], (27, 32, 3)),
      ("vgg19_weights", {"weights": p["w19.msgpack"]}, p["rgb.png"], (27, 32, 3)),
      ("exists_overwrite", {}, p["rgb.png"], (27, 32, 3)),
      ("new_nested_dir", {"output": os.path.join(d, "out", "new_nested_dir", "a", "b.jpg")},
       p["rgb.png"], (27, 32, 3)),
  ]
  base = {"content": p["rgb.png"], "style": p["rgb.png"], "weights": p["w16.msgpack"]}
  for name, flags, expect in rows:
    flags = {**base, "output": out(name), **flags}
    # Watch the case's own folder; outside the test folder (/sys), only the file itself.
    watch = flags["output"] if not flags["output"].startswith(d) else os.path.dirname(
        flags["output"])
    yield name, FAST + _argv(flags), ("error", expect, watch)
  for name, flags, ref, shape in ok:
    flags = {**base, "output": out(name), **flags}
    yield name, FAST + _argv(flags), ("ok", flags["output"], shape, ref)


def _argv(flags):
  args = []
  for key, value in flags.items():
    if key == "+":
      args.append(value)
    elif isinstance(value, bool):
      args.append(f"--{'' if value else 'no'}{key}")
    else:
      args.append(f"--{key.lstrip('+')}={value}")
  return args


def checkpoint_tables(p, d, johnson_wd):
  """Cases that need a trained Johnson workdir: (stylize rows, train rows)."""
  garbage = os.path.join(d, "garbage_ckpt")
  os.makedirs(os.path.join(garbage, "checkpoints", "4"))
  with open(os.path.join(garbage, "config.json"), "w") as f:
    json.dump({"method": "johnson", "config": {"model": {}}}, f)
  with open(os.path.join(garbage, "checkpoints", "4", "_CHECKPOINT_METADATA"), "wb") as f:
    f.write(np.random.default_rng(1).bytes(300))
  notjson = os.path.join(d, "notjson_ckpt")
  os.makedirs(notjson)
  with open(os.path.join(notjson, "config.json"), "w") as f:
    f.write("{not json")
  out = lambda name: os.path.join(d, "out", name, "result.png")  # noqa: E731
  base = {"content": p["rgb.png"], "method": "johnson", "checkpoint": johnson_wd}
  stylize = [
      ("ckpt_other_method", {"method": "adain"}, ("error", "'johnson' model, not adain")),
      ("ckpt_garbage", {"checkpoint": garbage}, ("error", "checkpoint")),
      ("ckpt_not_json", {"checkpoint": notjson}, ("error", "cannot read")),
      ("ckpt_not_a_run", {"checkpoint": p["folder.png"]}, ("error", "not a jaxstyle training")),
      ("ckpt_with_set", {"set": "width=2"}, ("error", "takes no --set")),
      ("ckpt_exif", {"content": p["exif.jpg"]}, ("ok", (27, 32, 3))),
      ("ckpt_one_pixel", {"content": p["one.png"]}, ("ok", (32, 32, 3))),
  ]
  for name, flags, expect in stylize:
    args = _argv({**base, "output": out(name), "size": 32, **flags})
    if expect[0] == "error":
      yield "stylize", name, args, ("error", expect[1], out(name))
    else:
      yield "stylize", name, args, ("ok", out(name), expect[1], None)
  common = JOHNSON_TINY + ["--steps=2", f"--weights={p['w16.msgpack']}"]
  train = [
      ("workdir_of_other_method", ["--method=adain", "--image_size=32", "--batch_size=2",
                                   "--steps=2", f"--weights={p['w16.msgpack']}",
                                   f"--workdir={johnson_wd}"], "holds a johnson run", johnson_wd),
      ("garbage_checkpoint_folder", [f"--workdir={garbage}"], "checkpoint",
       os.path.join(garbage, "checkpoints")),
  ]
  for name, extra, match, watch in train:
    args = extra if extra[0] == "--method=adain" else common + extra
    yield "train", name, args, ("error", match, watch)


def train_table(p, d):
  wd = lambda name: os.path.join(d, "runs", name)  # noqa: E731
  common = JOHNSON_TINY + ["--steps=2", f"--weights={p['w16.msgpack']}"]
  rows = [
      ("gatys_not_trainable", ["--method=gatys"], "--method=gatys cannot be trained"),
      ("unknown_method", ["--method=nope"], "--method=nope cannot be trained"),
      ("negative_steps", ["--steps=-3"], "--steps must be positive"),
      ("zero_batch", ["--batch_size=0"], "--batch_size must be positive"),
      ("negative_clip", ["--grad_clip_norm=-1"], "--grad_clip_norm must be >= 0"),
      ("steps_not_a_number", ["--steps=ten"], "--steps=ten"),
      ("content_dir_missing", ["--content_dir=/nonexistent/photos"], "is not a directory"),
      ("content_dir_is_file", [f"--content_dir={p['rgb.png']}"], "is not a directory"),
      ("content_dir_no_images", [f"--content_dir={p['folder.png']}"], "no images"),
      ("content_dir_all_unreadable", [f"--content_dir={p['bad_only']}"],
       "none of the 3 images could be read"),
      ("style_dir_no_images", [f"--style_dir={p['folder.png']}"], "no images"),
      ("weights_noise", [f"--weights={p['noise.msgpack']}"], "noise.msgpack"),
      ("set_unknown_key", ["--set=widht=2"], "unknown setting 'widht'"),
      ("set_bad_value", ["--set=num_residual=many"], "bad value 'many'"),
      ("bad_style_image", [f"--set=style_image={p['cut.png']}"], "corrupt or truncated"),
  ]
  for name, extra, match in rows:
    yield name, common + [f"--workdir={wd(name)}"] + extra, ("error", match, wd(name))
  ckpt_file = wd("checkpoints_is_a_file")
  os.makedirs(ckpt_file)
  with open(os.path.join(ckpt_file, "checkpoints"), "w") as f:
    f.write("not a folder\n")
  yield ("checkpoints_is_a_file", common + [f"--workdir={ckpt_file}"],
         ("error", "checkpoints", ckpt_file))
  yield ("workdir_is_file", common + [f"--workdir={p['file.txt']}"],
         ("error", "exists and is not a directory", p["file.txt"]))


def convert_table(p, d):
  out = lambda name: os.path.join(d, "out", name, "vgg.msgpack")  # noqa: E731
  os.makedirs(out("output_is_dir"))
  rows = [
      ("no_input", [], "--input (or --fetch_hed) is required"),
      ("input_missing", ["--input=/nonexistent/vgg.h5"], "does not exist"),
      ("input_noise_h5", [f"--input={p['noise.msgpack']}", "--format=h5"], "noise.msgpack"),
      ("input_noise_unknown", [f"--input={p['noise.bin']}"], "cannot tell the format"),
      ("input_empty_h5", [f"--input={p['empty.h5']}"], "empty.h5"),
      ("input_text_pth", [f"--input={p['notes.pth']}"], "notes.pth"),
      ("input_truncated", [f"--input={p['cut.msgpack']}"], "cut.msgpack"),
      ("vgg19_as_16", [f"--input={p['w19.msgpack']}", "--depth=16"], "expected VGG16"),
      ("depth_17", [f"--input={p['w16.msgpack']}", "--depth=17"], "--depth=17"),
      ("fetch_and_input", ["--fetch_hed", f"--input={p['w16.msgpack']}"], "not both"),
      ("input_is_output", [f"--input={p['w16.msgpack']}", f"--output={p['w16.msgpack']}"],
       "would overwrite --input"),
  ]
  for name, extra, match in rows:
    args = extra if any(a.startswith("--output") for a in extra) else extra + [
        f"--output={out(name)}"]
    yield name, args, ("error", match, os.path.dirname(out(name)))
  yield ("output_bad_suffix", [f"--input={p['w16.msgpack']}", f"--output={d}/out/x/vgg.h5"],
         ("error", "must end in one of .msgpack", f"{d}/out/x"))
  yield ("output_readonly", [f"--input={p['w16.msgpack']}",
                             f"--output={_readonly_dir(d)}/vgg.msgpack"],
         ("error", "not writable", f"{_readonly_dir(d)}/vgg.msgpack"))
  yield ("output_is_dir", [f"--input={p['w16.msgpack']}", f"--output={out('output_is_dir')}"],
         ("error", "is a directory", out("output_is_dir")))
  yield ("depth_16_ok", [f"--input={p['w16.msgpack']}", "--depth=16",
                         f"--output={out('depth_16_ok')}"], ("ok", out("depth_16_ok"), None, None))


# --------------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("bad_inputs"))
  p = make_inputs(d)
  p["dir"] = d
  # A training folder where four of seven "images" cannot be read.
  content = os.path.join(d, "in", "train_content")
  os.makedirs(os.path.join(content, "sub"))
  for name in ("rgb.png", "gray.png", "exif.jpg", "empty.png", "cut.png", "notes.jpg", "bomb.png"):
    target = os.path.join(content, "sub" if name.startswith("e") else "", name)
    with open(p[name], "rb") as src, open(target, "wb") as dst:
      dst.write(src.read())
  with open(os.path.join(content, "README.txt"), "w") as f:
    f.write("not an image suffix: ignored, not counted\n")
  p["train_content"], p["bad_in_train_content"] = content, 4
  p["train_style"] = os.path.join(d, "in", "train_style")
  os.makedirs(p["train_style"])
  Image.open(p["cmyk.jpg"]).convert("RGB").save(os.path.join(p["train_style"], "style.png"))
  return p


def train_args(p, workdir, steps):
  return [os.path.join(ROOT, "launch", "train.py")] + JOHNSON_TINY + [
      f"--steps={steps}", "--checkpoint_every=2", "--log_every=1", f"--workdir={workdir}",
      f"--content_dir={p['train_content']}", f"--style_dir={p['train_style']}",
      f"--weights={p['w16.msgpack']}"]


TRAIN_STEPS = 8


@pytest.fixture(scope="module")
def reference_run(inputs):
  """An uninterrupted tiny Johnson run on a folder with unreadable files; started at once."""
  workdir = os.path.join(inputs["dir"], "runs", "reference")
  proc = subprocess.Popen([sys.executable] + train_args(inputs, workdir, TRAIN_STEPS),
                          env=env_for(inputs["dir"]), cwd=inputs["dir"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  result = {}

  def wait():
    if not result:
      out, err = proc.communicate(timeout=900)
      result.update(rc=proc.returncode, stdout=out, stderr=err, workdir=workdir)
    return result
  yield wait
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def _check_all(table, results):
  failures = []
  for name, _, expected in table:
    result = results[name]
    if expected[0] == "error":
      failures.append(check_error(name, result, expected[1], expected[-1], snapshot(expected[2])))
      continue
    problem = check_ok(name, result)
    _, output, shape, ref = expected
    if problem is None and shape is None:
      from pretrained import converted  # pylint: disable=g-import-not-at-top
      _, depth, _ = converted.load(output)  # raises if the file is not a complete weights file
      leftovers = sorted(os.listdir(os.path.dirname(output)))
      if depth != 16 or leftovers != [os.path.basename(output)]:
        problem = f"{name}: VGG{depth} in {output}, next to {leftovers}"
    if problem is None and shape is not None:
      img = np.asarray(Image.open(output).convert("RGB"), np.float64) / 255.0
      leftovers = sorted(set(os.listdir(os.path.dirname(output))) - {os.path.basename(output)})
      if img.shape != shape:
        problem = f"{name}: output shape {img.shape}, expected {shape}"
      elif leftovers:
        problem = f"{name}: extra files next to the output: {leftovers}"
      elif ref is not None:
        # 2 Adam steps at lr 1e-6 leave the content: the output shows how the file was decoded.
        err = np.abs(img - resized(reference_rgb(ref), shape[:2])).mean()
        if err > 0.01:
          problem = f"{name}: output differs from the decoded content by {err:.3f} on average"
    failures.append(problem)
  return [f for f in failures if f]


def _with_snapshots(table, cwd):
  """`table` rows with the watched path's snapshot taken now (before the run) appended."""
  rows = []
  for name, args, expected in table:
    if expected[0] == "error":
      expected = expected + (snapshot(expected[2]),)
    rows.append((name, args, expected))
  return rows, {name: {"args": args, "cwd": cwd} for name, args, _ in rows}


def test_every_bad_input_fails_cleanly_and_odd_inputs_work(inputs, reference_run):
  d = inputs["dir"]
  tables, waits = {}, {}
  for launcher, make in (("stylize", stylize_table), ("train", train_table),
                         ("convert", convert_table)):
    tables[launcher], cases = _with_snapshots(list(make(inputs, d)), d)
    waits[launcher] = start_batch(launcher, cases, d)
  assert sum(len(t) for t in tables.values()) >= 60
  failures = []
  for launcher, wait in waits.items():
    failures += _check_all(tables[launcher], wait())

  # Checkpoint cases need the trained workdir; it must not change under them either. They run as
  # separate processes: orbax can still print at interpreter exit.
  run = reference_run()
  assert run["rc"] == 0, run["stderr"][-3000:]
  rows = list(checkpoint_tables(inputs, d, run["workdir"]))
  before = snapshot(run["workdir"])
  for launcher in ("stylize", "train"):
    table, cases = _with_snapshots([r[1:] for r in rows if r[0] == launcher], d)
    failures += _check_all(table, run_each(launcher, cases, d))
  assert snapshot(run["workdir"]) == before
  cache = os.path.join(d, "cache")
  leftovers = [f for f in (os.listdir(cache) if os.path.isdir(cache) else []) if "tmp" in f]
  assert not leftovers, leftovers
  assert not failures, "\n".join(failures)


def test_training_skips_unreadable_files_and_reports_them(inputs, reference_run):
  run = reference_run()
  assert run["rc"] == 0, run["stderr"][-3000:]
  assert "Traceback" not in run["stderr"]
  last = run["stdout"].strip().splitlines()[-1]
  assert last.startswith(f"finished at step {TRAIN_STEPS}/{TRAIN_STEPS}"), run["stdout"]
  assert last.endswith(f"skipped {inputs['bad_in_train_content']} unreadable image file(s)"), last
  # Each bad file is warned about once; stderr holds nothing else (no orbax/absl INFO noise).
  lines = [l for l in run["stderr"].splitlines() if l.strip()]
  assert len(lines) == inputs["bad_in_train_content"], run["stderr"]
  assert all(DATA_WARNING in l for l in lines), run["stderr"]


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_params(inputs, reference_run):
  from jaxstyle.train import checkpoint  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(inputs["dir"], "runs", "killed")
  args = [sys.executable] + train_args(inputs, workdir, TRAIN_STEPS)
  env = env_for(inputs["dir"])
  kill_at = random.randint(3, TRAIN_STEPS - 2)
  proc = subprocess.Popen(args, env=env, cwd=inputs["dir"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  try:
    for line in proc.stdout:
      if line.startswith(f"step {kill_at}/"):
        proc.send_signal(signal.SIGKILL)
        break
    else:
      raise AssertionError(f"the run ended (rc={proc.wait()}) before step {kill_at}")
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
  resumed_from = checkpoint.latest_step(workdir)
  proc = subprocess.run(args, env=env, cwd=inputs["dir"], capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  if resumed_from:
    assert f"resuming {workdir} from step {resumed_from}" in proc.stdout, proc.stdout
  assert f"finished at step {TRAIN_STEPS}/{TRAIN_STEPS}" in proc.stdout, proc.stdout

  run = reference_run()
  assert run["rc"] == 0, run["stderr"][-3000:]
  assert checkpoint.latest_step(workdir) == checkpoint.latest_step(run["workdir"]) == TRAIN_STEPS
  want = checkpoint.load_params(run["workdir"])
  got = checkpoint.load_params(workdir)
  flat_want = jax.tree_util.tree_leaves_with_path(want)
  flat_got = jax.tree_util.tree_leaves_with_path(got)
  assert [k for k, _ in flat_got] == [k for k, _ in flat_want]
  for (path, a), (_, b) in zip(flat_want, flat_got):
    assert a.dtype == b.dtype and np.array_equal(a, b), (
        f"{jax.tree_util.keystr(path)} differs after a SIGKILL at step {kill_at} "
        f"(resumed from {resumed_from})")


def test_resume_with_other_model_settings_keeps_the_run_config(inputs, reference_run):
  run = reference_run()
  assert run["rc"] == 0, run["stderr"][-3000:]
  workdir = os.path.join(inputs["dir"], "runs", "changed_settings")
  subprocess.run(["cp", "-a", run["workdir"], workdir], check=True)
  config = os.path.join(workdir, "config.json")
  with open(config) as f:
    before = f.read()
  args = train_args(inputs, workdir, TRAIN_STEPS) + ["--set=width=0.25"]
  proc = subprocess.run([sys.executable] + args, env=env_for(inputs["dir"]), cwd=inputs["dir"],
                        capture_output=True, text=True, timeout=900)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 2 and last.startswith("error: checkpoint"), proc.stderr
  with open(config) as f:
    assert f.read() == before  # still describes the saved model, which stylize.py reads


if __name__ == "__main__":
  _drive(*sys.argv[1:4])
