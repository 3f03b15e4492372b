"""The released pytorch-AdaIN files: `vgg_normalised.pth` + `decoder.pth` against PyTorch.

The two networks are built here as the reference builds them (bare `nn.Sequential`s: reflection
pads, 3x3 convolutions, ReLUs, ceil-mode max pools / nearest upsampling), randomly initialised and
saved with their index keys, so the converters see the released files' exact layout.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxstyle import api
from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.errors import WeightsError
from jaxstyle.methods.adain import inference
from pretrained import adain_pth
from pretrained import formats

torch = pytest.importorskip("torch")
nn = torch.nn

from _vgg_files import rel_err  # noqa: E402  (needs torch)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vgg_normalised(preprocess):
  """The normalised VGG19 up to relu5_4: 1x1 preprocessing conv, then 16 padded 3x3 convs."""
  layers, cin = [nn.Conv2d(3, 3, 1)], 3
  for b, n in enumerate(vgg.BLOCKS[19]):
    for _ in range(n):
      layers += [nn.ReflectionPad2d(1), nn.Conv2d(cin, vgg.WIDTHS[b], 3), nn.ReLU()]
      cin = vgg.WIDTHS[b]
    if b < 4:
      layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
  net = nn.Sequential(*layers)
  with torch.no_grad():
    if preprocess == "caffe":  # the released 1x1: x255, RGB -> BGR, minus the Caffe mean
      net[0].weight.copy_(torch.flip(torch.eye(3), [0])[:, :, None, None] * 255.0)
      net[0].bias.copy_(-torch.tensor(vgg.CAFFE_MEAN_BGR))
    for m in net:
      if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
        nn.init.normal_(m.bias, 0.0, 0.1)
  return net.eval()


def _decoder():
  """AdaIN's VGG19 decoder: 9 reflection-padded 3x3 convs, nearest x2 before blocks 3, 2 and 1."""
  spec = [(512, 256), "up", (256, 256), (256, 256), (256, 256), (256, 128), "up", (128, 128),
          (128, 64), "up", (64, 64), (64, 3)]
  layers = []
  for item in spec:
    if item == "up":
      layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
      continue
    layers += [nn.ReflectionPad2d(1), nn.Conv2d(*item, 3)]
    if item[1] != 3:
      layers.append(nn.ReLU())
  net = nn.Sequential(*layers)
  with torch.no_grad():
    for m in net:  # He init keeps the activations' scale through the nine layers
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.normal_(m.bias, 0.0, 0.05)
  return net.eval()


def _calibrate(decoder, encoder):
  """Scales the last layer so that decoded random images spread over [0, 1] around 0.5."""
  x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    y = decoder(encoder[:31](x))
    decoder[-1].weight.mul_(0.25 / y.std())
    decoder[-1].bias.add_(0.5 - decoder(encoder[:31](x)).mean())


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  d = tmp_path_factory.mktemp("adain_released")
  torch.manual_seed(0)
  nets = {"caffe": _vgg_normalised("caffe"), "random": _vgg_normalised("random"),
          "decoder": _decoder()}
  _calibrate(nets["decoder"], nets["caffe"])
  paths = {}
  for name, net in nets.items():
    paths[name] = str(d / f"{name}.pth")
    torch.save(net.state_dict(), paths[name])
  return nets, paths, d


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _relu4_1(net, x01):
  with torch.no_grad():
    return net[:31](_nchw(x01))


@pytest.mark.parametrize("encoder,convention", [("caffe", "caffe"), ("random", "caffe"),
                                                ("random", "torchvision")])
def test_vgg_normalised_features_match_torch(released, encoder, convention, rng):
  nets, paths, _ = released
  params, depth, got_convention = formats.convert_file(paths[encoder], convention=convention
                                                       if encoder == "random" else "auto")
  assert (depth, got_convention) == (19, convention)
  # Reflection padding (AdaIN's encoder): folding the 1x1 map into conv1_1 is then exact.
  net = vgg.LossNet(params=params, depth=19, convention=convention, padding="reflect")
  x01 = rng.random((2, 32, 40, 3)).astype(np.float32)
  got = net.features(x01, ["relu1_1", "relu4_1"])
  with torch.no_grad():
    want = {"relu1_1": nets[encoder][:4](_nchw(x01)), "relu4_1": _relu4_1(nets[encoder], x01)}
  for name, value in want.items():
    assert rel_err(got[name], np.transpose(value.numpy(), (0, 2, 3, 1))) < 1e-4, name
  if encoder == "caffe":  # the released form folds to the Caffe weights themselves
    np.testing.assert_allclose(params["conv1_1"]["kernel"],
                               nets["caffe"][2].weight.detach().numpy().transpose(2, 3, 1, 0),
                               rtol=1e-5, atol=1e-6)


def test_released_model_stylizes_like_torch(released, rng):
  nets, paths, d = released
  model, params = inference.load_released(paths["decoder"], paths["caffe"])
  content = rng.random((64, 48, 3)).astype(np.float32)
  style = rng.random((40, 56, 3)).astype(np.float32)
  got = inference.stylize(model, params, content, [style], alpha=0.7)
  with torch.no_grad():
    fc, fs = _relu4_1(nets["caffe"], content[None]), _relu4_1(nets["caffe"], style[None])
    mc, ms = fc.mean((2, 3), keepdim=True), fs.mean((2, 3), keepdim=True)
    sc = (fc.var((2, 3), keepdim=True, unbiased=False) + 1e-5).sqrt()
    ss = (fs.var((2, 3), keepdim=True, unbiased=False) + 1e-5).sqrt()
    t = 0.7 * ((fc - mc) / sc * ss + ms) + 0.3 * fc
    want = nets["decoder"](t).clamp(0, 1)[0].permute(1, 2, 0).numpy()
  inside = ((want > 0.01) & (want < 0.99)).mean()
  assert inside > 0.5 and want.std() > 0.1, (inside, want.std())  # values, not the clip or a bias
  assert np.abs(got - want).max() < 2e-3


def test_released_files_fail_clearly(released, tmp_path):
  nets, paths, _ = released
  with pytest.raises(ConfigError, match="pass the encoder it was trained with"):
    inference.load_released(paths["decoder"], inference.DEFAULT_WEIGHTS)
  with pytest.raises(WeightsError, match="is the encoder"):
    inference.load_released(paths["caffe"], paths["caffe"])
  sd = nets["decoder"].state_dict()
  del sd["28.bias"]
  torch.save(sd, str(tmp_path / "cut.pth"))
  with pytest.raises(WeightsError, match="module 28 is not a convolution with a bias"):
    inference.load_released(str(tmp_path / "cut.pth"), paths["caffe"])
  sd = {k: v for k, v in nets["caffe"].state_dict().items() if not k.startswith("51.")}
  with pytest.raises(WeightsError, match="has 16 convolutions; the normalised VGG19 has 17"):
    adain_pth.convert_vgg_normalised(sd)
  with pytest.raises(WeightsError, match="holds VGG19 weights, expected VGG16"):
    formats.convert_file(paths["caffe"], depth=16)


def test_stylize_settings_are_checked(released):
  _, paths, _ = released
  for eps, match in (("abc", "bad value 'abc' for setting 'eps'"), ("-1", "must be a positive")):
    request = api.StylizeRequest(method="adain", content=np.zeros((16, 16, 3), np.float32),
                                 styles=[np.zeros((16, 16, 3), np.float32)],
                                 checkpoint=paths["decoder"], weights=paths["caffe"],
                                 overrides={"eps": eps})
    with pytest.raises(ConfigError, match=match):
      inference.run_stylize(request)


def test_stylize_launcher_takes_released_files(released):
  _, paths, d = released
  rng = np.random.default_rng(1)
  for name in ("c.png", "s.png"):
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(str(d / name))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAXSTYLE_CACHE=str(d / "cache"), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  base = [sys.executable, os.path.join(ROOT, "launch", "stylize.py"), "--method=adain",
          f"--checkpoint={paths['decoder']}", f"--content={d / 'c.png'}",
          f"--style={d / 's.png'}", "--size=48"]
  ok = subprocess.run(base + [f"--weights={paths['caffe']}", f"--output={d / 'out.png'}"],
                      capture_output=True, text=True, env=env, check=False)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert Image.open(str(d / "out.png")).size == (48, 40)
  bad = subprocess.run(base + [f"--output={d / 'bad.png'}"], capture_output=True, text=True,
                       env=env, check=False)
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert "--weights=<path to vgg_normalised.pth>" in bad.stderr.strip().splitlines()[-1]
  assert not os.path.exists(str(d / "bad.png"))
  # The released model exported to ONNX (any style at run time), checked by onnxruntime on c, s.
  pytest.importorskip("onnxruntime")
  onnx_path = d / "adain.onnx"
  exported = subprocess.run(base + [f"--weights={paths['caffe']}", "--alpha=0.8",
                                    f"--export_onnx={onnx_path}"],
                            capture_output=True, text=True, env=env, check=False)
  assert exported.returncode == 0, exported.stderr[-2000:]
  assert "matches jaxstyle to" in exported.stdout and exported.stderr == "", exported
  import onnx  # pylint: disable=g-import-not-at-top
  graph = onnx.load(str(onnx_path)).graph
  assert [i.name for i in graph.input] == ["content", "style", "alpha"]
  assert [float(onnx.numpy_helper.to_array(t)) for t in graph.initializer
          if t.name == "alpha"] == [pytest.approx(0.8)]
  two = subprocess.run(base + [f"--weights={paths['caffe']}", f"--style={d / 'c.png'}",
                               f"--export_onnx={d / 'two.onnx'}"],
                       capture_output=True, text=True, env=env, check=False)
  assert two.returncode == 2 and "takes one style image at run time" in two.stderr, two.stderr
  assert not os.path.exists(str(d / "two.onnx"))
