"""End-to-end tests of launch/stylize.py in subprocesses.

The loss network is a randomly initialised full-size VGG16 written as a converted msgpack file (the
same format `pretrained/` produces), passed with --weights, so no download happens and the run is
real: 32 px images and 2 optimiser steps keep it fast. The subprocesses run concurrently because
each mostly waits on the JAX import.
"""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxstyle import image as image_lib
from jaxstyle import vgg
from pretrained import converted

from _launcher_cases import png_header_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "stylize.py")
SMALL = ["--size=32", "--steps=2", "--optimizer=adam",
         "--set=content_layers=relu2_2", "--set=style_layers=relu1_1,relu2_1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("cli")
  p = {k: str(d / k) for k in ("weights.msgpack", "rgb.png", "g16.png", "rgba.png", "gray.png",
                               "cmyk.jpg", "pal.png", "empty.png", "cut.png", "notes.jpg",
                               "bomb.png", "mask.png", "file.txt")}
  converted.save(p["weights.msgpack"], vgg.init_params(0, 16), 16, "caffe", "random-test-net")
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 255, (40, 48, 3), np.uint8)
  Image.fromarray(rgb).save(p["rgb.png"])
  Image.fromarray((rng.integers(0, 65535, (40, 48))).astype(np.uint16)).save(p["g16.png"])
  alpha = rng.integers(0, 255, (40, 48), np.uint8)
  Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p["rgba.png"])
  Image.fromarray(rgb[..., 0], "L").save(p["gray.png"])
  Image.fromarray(rgb).convert("CMYK").save(p["cmyk.jpg"])
  Image.fromarray(rgb).quantize(8).save(p["pal.png"], transparency=0)
  Image.fromarray(rgb[..., 1], "L").save(p["mask.png"])
  open(p["empty.png"], "wb").close()
  data = open(p["rgb.png"], "rb").read()
  open(p["cut.png"], "wb").write(data[: len(data) // 2])
  open(p["notes.jpg"], "w").write("not an image\n")
  open(p["file.txt"], "w").write("x")
  png_header_only(p["bomb.png"], 15000, 15000)
  p["dir"] = str(d)
  return p


def _start(args, files):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAXSTYLE_CACHE=os.path.join(files["dir"], "cache"), JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT)
  return subprocess.Popen([sys.executable, SCRIPT] + args, cwd=files["dir"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _bad_cases(f):
  base = {"--content": f["rgb.png"], "--style": f["rgb.png"], "--weights": f["weights.msgpack"]}
  cases = {
      "missing": ({"--content": "/nonexistent/photo.png"}, [], "does not exist"),
      "empty": ({"--content": f["empty.png"]}, [], "is empty"),
      "truncated": ({"--content": f["cut.png"]}, [], "corrupt or truncated"),
      "non_image": ({"--style": f["notes.jpg"]}, [], "not an image"),
      "bomb": ({"--style": f["bomb.png"]}, [], "pixels"),
      "negative_size": ({}, ["--size=-5"], "--size must be positive"),
      "zero_steps": ({}, ["--steps=0"], "--steps must be positive"),
      "unknown_method": ({}, ["--method=nope"], "unknown method 'nope'"),
      "mask_count": ({}, [f"--style={f['rgb.png']}", f"--mask={f['mask.png']}"],
                     "--mask given 1 times for 2 styles"),
      "unwritable": ({}, [f"--output={f['file.txt']}/sub/out.png"],
                     "cannot create output directory"),
      "bad_suffix": ({}, [f"--output={f['dir']}/out.gif"], "must end in one of"),
      "bad_weights": ({"--weights": "/nonexistent/vgg.msgpack"}, [], "unknown weights"),
      "bad_setting": ({}, ["--set=style_wieght=3"], "unknown setting 'style_wieght'"),
      "too_small": ({}, ["--set=scales=9"], "too small"),
      "arena_without_retain": ({}, ["--noretain_host_memory", "--single_malloc_arena"],
                               "--single_malloc_arena needs --retain_host_memory"),
      "cache_in_a_file": ({}, [f"--compilation_cache_dir={f['file.txt']}/xla"],
                          "cannot use"),
  }
  for name, (override, extra, match) in cases.items():
    flags = dict(base, **override)
    output = os.path.join(f["dir"], "bad", f"{name}.png")
    args = [f"{k}={v}" for k, v in flags.items()] + SMALL + [f"--output={output}"] + extra
    yield name, args, match, output


def test_cli_success_and_every_bad_input(files):
  out = os.path.join(files["dir"], "out", "result.png")
  ok_args = [f"--content={files['g16.png']}", f"--style={files['rgba.png']}",
             f"--style={files['gray.png']}", f"--style={files['cmyk.jpg']}",
             f"--style={files['pal.png']}", "--style_weights=1,1,2,1",
             f"--weights={files['weights.msgpack']}", f"--output={out}", "--grid",
             f"--compilation_cache_dir={files['dir']}/xla"] + SMALL
  procs = {"ok": (_start(ok_args, files), None, out)}
  for name, args, match, output in _bad_cases(files):
    procs[name] = (_start(args, files), match, output)
  failures, ok = [], None
  for name, (proc, match, output) in procs.items():
    _, stderr = proc.communicate(timeout=600)
    if match is None:
      ok = (proc.returncode, stderr)
      continue
    lines = [l for l in stderr.splitlines() if l.strip()]
    error_lines = [l for l in lines if l.startswith("error: ")]
    if (proc.returncode != 2 or "Traceback" in stderr or len(error_lines) != 1
        or lines[-1] != error_lines[0] or match not in error_lines[0] or os.path.exists(output)):
      failures.append(f"{name}: rc={proc.returncode} stderr={stderr[-800:]!r}")
  assert not failures, "\n".join(failures)

  assert ok[0] == 0, ok[1][-2000:]
  result = image_lib.load_image(out)
  assert result.shape == (27, 32, 3)                 # 40x48 content, long side 32
  assert result.std() > 0.01
  grid = image_lib.load_image(os.path.join(files["dir"], "out", "result_grid.png"))
  assert grid.shape[0] == 27 and grid.shape[1] > 5 * 32
  assert sorted(os.listdir(os.path.dirname(out))) == ["result.png", "result_grid.png"]
  assert sorted(os.listdir(os.path.join(files["dir"], "xla"))) == ["autotune", "jax"]


def test_sigterm_mid_run_exits_cleanly_without_output(files):
  out_dir = os.path.join(files["dir"], "term")
  out = os.path.join(out_dir, "result.png")
  proc = _start([f"--content={files['rgb.png']}", f"--style={files['rgb.png']}",
                 f"--weights={files['weights.msgpack']}", f"--output={out}", "--steps=100000"]
                + SMALL[:1] + ["--optimizer=adam"] + SMALL[3:], files)
  try:
    for line in proc.stdout:  # no terminal: a "step N loss=..." line every 25 steps
      if line.startswith("step "):
        break
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
  assert "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1] == "error: terminated"
  assert not os.path.exists(out_dir) or not os.listdir(out_dir)
