"""A content folder (video frames) through launch/stylize.py and `api.make_stylizer`.

The feed-forward model is a narrow pytorch/examples TransformerNet file with random weights (it
loads through the released-model path, so no training is needed); the optimisation method runs on a
random VGG16 msgpack, 2 steps at 32 px.
"""
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from jaxstyle import api
from jaxstyle import image as image_lib
from jaxstyle import vgg
from jaxstyle.methods.johnson import inference as johnson_inference
from pretrained import converted

torch = pytest.importorskip("torch")

from _released_nets import ExamplesTransformerNet  # noqa: E402  (needs torch)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "stylize.py")
# Natural order (frame_2 before frame_10), mixed formats and sizes; skipped: other files, hidden.
FRAMES = {"frame_1.png": (40, 48), "frame_2.jpg": (30, 60), "frame_10.png": (48, 40)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("folder")
  frames = d / "frames"
  frames.mkdir()
  rng = np.random.default_rng(0)
  for name, (h, w) in FRAMES.items():
    Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(str(frames / name))
  (frames / "notes.txt").write_text("not a frame")
  (frames / ".hidden.png").write_bytes(b"")
  torch.manual_seed(0)
  net = ExamplesTransformerNet(c1=8, num_residual=1)
  with torch.no_grad():
    net.deconv3.conv2d.bias.fill_(128.0)
    net.deconv3.conv2d.weight.mul_(300.0)  # results that vary across the image and the frames
  torch.save(net.state_dict(), str(d / "tiny.pth"))
  converted.save(str(d / "vgg.msgpack"), vgg.init_params(0, 16), 16, "caffe", "random-test-net")
  return d


def _run(args, d):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAXSTYLE_CACHE=str(d / "cache"), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.Popen([sys.executable, SCRIPT] + args, cwd=str(d), env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc):
  out, err = proc.communicate(timeout=600)
  return proc.returncode, out, err


def test_folder_runs_each_image_with_one_model(files):
  d = files
  johnson = ["--method=johnson", f"--checkpoint={d / 'tiny.pth'}", "--size=48"]
  gatys = ["--method=gatys", "--content=frames/", "--size=32", "--steps=2", "--optimizer=adam",
           f"--weights={d / 'vgg.msgpack'}", "--set=content_layers=relu2_2",
           "--set=style_layers=relu1_1"]
  runs = {
      "johnson": _run(johnson + ["--content=frames", "--output=out_j"], d),
      "gatys": _run(gatys + ["--output=out_g"], d),
      "chained": _run(gatys + ["--output=out_c", "--init=previous"], d),
  }
  results = {k: _finish(p) for k, p in runs.items()}
  for k, (rc, out, err) in results.items():
    assert rc == 0, (k, err[-2000:])
    assert "wrote 3 image(s)" in out
  model, params, _ = johnson_inference.load_released(str(d / "tiny.pth"))
  for name, (h, w) in FRAMES.items():
    out_name = os.path.splitext(name)[0] + ".png"
    got = np.asarray(Image.open(str(d / "out_j" / out_name)), np.float32) / 255.0
    content = image_lib.load_image(str(d / "frames" / name), 48)
    assert got.shape[:2] == content.shape[:2] and max(got.shape[:2]) == 48
    want = johnson_inference.stylize(model, params, content)
    assert want.std() > 0.05
    assert np.abs(got - want).max() <= 1.0 / 255 + 1e-6  # the single-image path, to uint8 rounding
    assert max(Image.open(str(d / "out_g" / out_name)).size) == 32
  assert sorted(os.listdir(str(d / "out_j"))) == sorted(
      os.path.splitext(n)[0] + ".png" for n in FRAMES)  # no temporary files left
  # --init=previous: after the first, each result starts from (stays near) the one before it.
  load = lambda folder, name: image_lib.load_image(str(d / folder / name))  # noqa: E731
  np.testing.assert_array_equal(load("out_c", "frame_1.png"), load("out_g", "frame_1.png"))
  for before, name in (("frame_1.png", "frame_2.png"), ("frame_2.png", "frame_10.png")):
    chained, alone = load("out_c", name), load("out_g", name)
    start = image_lib.resize(load("out_c", before), chained.shape[:2])
    assert np.abs(chained - start).mean() < 0.5 * np.abs(alone - start).mean(), name


def test_nooverwrite_resumes(files):
  d = files
  out = d / "out_resume"
  out.mkdir()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(str(out / "frame_2.png"))  # "done" earlier
  args = ["--method=johnson", f"--checkpoint={d / 'tiny.pth'}", "--size=48", "--content=frames",
          f"--output={out}", "--nooverwrite"]
  rc, stdout, err = _finish(_run(args, d))
  assert rc == 0, err[-2000:]
  assert "skipping 1 image(s)" in stdout and "wrote 2 image(s)" in stdout
  assert Image.open(str(out / "frame_2.png")).size == (4, 4)
  assert Image.open(str(out / "frame_10.png")).size == (40, 48)


def test_folder_errors_are_one_line(files, tmp_path):
  d = files
  clash = tmp_path / "clash"
  clash.mkdir()
  for name in ("a.png", "a.jpg"):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(str(clash / name))
  torn = tmp_path / "torn"
  torn.mkdir()
  Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(str(torn / "0.png"))
  (torn / "1.png").write_bytes(open(str(torn / "0.png"), "rb").read()[:60])
  (tmp_path / "empty").mkdir()
  base = ["--method=johnson", f"--checkpoint={d / 'tiny.pth'}", "--size=48"]
  cases = {
      "--grid shows one result": ["--content=frames", "--grid", f"--output={tmp_path / 'g'}"],
      "--output names a folder": ["--content=frames", f"--output={tmp_path / 'x.png'}"],
      "no images": [f"--content={tmp_path / 'empty'}", f"--output={tmp_path / 'e'}"],
      "several images named a.*": [f"--content={clash}", f"--output={tmp_path / 'c'}"],
      "1.png": [f"--content={torn}", f"--output={tmp_path / 't'}"],
      "is the content folder": [f"--content={torn}", f"--output={torn}/"],
      "--init applies to gatys, histogram": ["--content=frames", "--init=previous",
                                             f"--output={tmp_path / 'i'}"],
      "--init=previous needs a content folder": [f"--content={torn / '0.png'}", "--init=previous",
                                                 f"--output={tmp_path / 'i.png'}"],
  }
  procs = {k: _run(base + v, d) for k, v in cases.items()}
  for message, proc in procs.items():
    rc, _, err = _finish(proc)
    assert rc != 0 and "Traceback" not in err, (message, err[-2000:])
    assert message in err.strip().splitlines()[-1], (message, err[-500:])
  # The torn frame stops the run after the good one, which is complete; nothing half-written.
  assert os.listdir(str(tmp_path / "t")) == ["0.png"]
  for name in ("g", "x.png", "e", "c", "i", "i.png"):
    assert not os.path.exists(str(tmp_path / name))


def test_make_stylizer_loads_once_and_falls_back_to_run_stylize(files, monkeypatch):
  d = files
  calls = []
  real = johnson_inference.load_released
  monkeypatch.setattr(johnson_inference, "load_released",
                      lambda path: calls.append(path) or real(path))
  request = api.StylizeRequest(method="johnson", content=np.zeros((16, 16, 3), np.float32),
                               checkpoint=str(d / "tiny.pth"))
  stylizer = api.make_stylizer(request)
  rng = np.random.default_rng(0)
  outs = [stylizer(rng.random((16, 20, 3)).astype(np.float32)) for _ in range(2)]
  assert len(calls) == 1 and outs[0].shape == (16, 20, 3) and not np.allclose(*outs)
  # A method without `make_stylizer` runs `run_stylize` on each content in turn.
  seen = []
  fake = types.SimpleNamespace(run_stylize=lambda r: seen.append(r.content) or r.content * 2)
  monkeypatch.setattr(api, "get_method", lambda name: fake)
  stylizer = api.make_stylizer(api.StylizeRequest(method="gatys", content=None))
  assert stylizer(np.ones(3)).tolist() == [2, 2, 2] and len(seen) == 1
