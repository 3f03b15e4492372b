"""Released PyTorch feed-forward models: pytorch/examples fast_neural_style `.pth` (johnson) and
PyTorch-Multi-Style-Transfer `21styles.model` (msgnet), converted and run against PyTorch.

The files are made here from `_released_nets` (the references' module layouts, so their keys), with
random weights, saved in PyTorch's pre-1.6 format and with the InstanceNorm running statistics that
pre-0.4 PyTorch stored, as the released files have.
"""
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxstyle import api
from jaxstyle.errors import ConfigError
from jaxstyle.errors import WeightsError
from jaxstyle.methods import johnson
from jaxstyle.methods import msgnet
from jaxstyle.methods.johnson import inference as johnson_inference
from jaxstyle.methods.msgnet import inference as msgnet_inference
from pretrained import released_pth

torch = pytest.importorskip("torch")

from _released_nets import ExamplesTransformerNet, MultiStyleNet  # noqa: E402  (needs torch)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _randomize(net, seed, out_bias, gain):
  """Random norm affines and biases (PyTorch initialises them to 1/0, which would hide a swap)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.InstanceNorm2d)) and m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
      if isinstance(m, torch.nn.InstanceNorm2d) and m.weight is not None:
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    last.weight.mul_(gain)  # an output that spans the 0-255 range
    last.bias.add_(out_bias)
  return net.eval()


def _save_legacy(net, path):
  """`torch.save` as 2017 PyTorch did: the old format, plus every InstanceNorm's running stats
  (under each name the module has, as in MSG-Net's doubled keys)."""
  sd = dict(net.state_dict())
  for name, m in net.named_modules(remove_duplicate=False):
    if isinstance(m, torch.nn.InstanceNorm2d):
      sd[f"{name}.running_mean"] = torch.randn(m.num_features)
      sd[f"{name}.running_var"] = torch.rand(m.num_features) + 5.0
  torch.save(sd, str(path), _use_new_zipfile_serialization=False)
  return sd


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("released")
  nets = {"johnson": _randomize(ExamplesTransformerNet(), 0, 128.0, 150.0),
          "msgnet": _randomize(MultiStyleNet(stem=16, ngf=8, n_blocks=2), 1, 128.0, 100.0)}
  paths = {"johnson": d / "candy.pth", "msgnet": d / "21styles.model"}
  sds = {k: _save_legacy(nets[k], paths[k]) for k in nets}
  return nets, {k: str(v) for k, v in paths.items()}, sds, d


def test_key_layouts_are_the_references(files):
  """Keys as the released files and the issue reports show them."""
  _, _, sds, _ = files
  for key in ("conv1.conv2d.weight", "in1.weight", "res5.in2.bias", "deconv1.conv2d.bias",
              "in5.running_var", "deconv3.conv2d.weight"):
    assert key in sds["johnson"], key
  for key in ("model1.0.conv2d.weight", "model.0.3.conv_block.5.conv2d.weight",
              "model.0.3.conv_block.3.running_mean", "model.0.4.residual_layer.weight",
              "ins.weight", "model.1.weight", "model.4.conv_block.8.bias",
              "model.5.residual_layer.conv2d.weight",
              "model.8.conv2d.weight"):  # with 2 blocks the 7x7 output conv is module 8
    assert key in sds["msgnet"], key


def test_johnson_released_matches_torch(files, rng):
  nets, paths, _, _ = files
  model, params, config = johnson_inference.load_released(paths["johnson"])
  assert config == johnson.JohnsonConfig(output="linear")  # the reference's widths and blocks
  x = rng.random((2, 36, 44, 3)).astype(np.float32)
  got = np.asarray(model.apply({"params": params}, jnp.asarray(x)))
  with torch.no_grad():
    want = nets["johnson"](_nchw(x * 255.0)).numpy().transpose(0, 2, 3, 1) / 255.0
  inside = ((want > 0.01) & (want < 0.99)).mean()
  assert inside > 0.3 and want.std() > 0.1, (inside, want.std())  # values, not a clip
  np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())


def test_msgnet_released_matches_torch(files, rng):
  nets, paths, _, _ = files
  model, params, config = msgnet_inference.load(paths["msgnet"])
  assert (config.stem_features, config.ngf, config.n_blocks, config.output_offset) == (16, 8, 2, 0)
  content = rng.random((1, 32, 40, 3)).astype(np.float32)
  style = rng.random((28, 36, 3)).astype(np.float32)
  gram = msgnet_inference.style_gram(model, params, [style])
  got = np.asarray(model.apply({"params": params}, jnp.asarray(content), gram))
  net = nets["msgnet"]
  with torch.no_grad():  # the reference's BGR 0-255 in and out
    net.set_target(_nchw(style[None, ..., ::-1] * 255.0))
    want = net(_nchw(content[..., ::-1] * 255.0)).numpy().transpose(0, 2, 3, 1)[..., ::-1] / 255.0
  inside = ((want > 0.01) & (want < 0.99)).mean()
  assert inside > 0.3 and want.std() > 0.1, (inside, want.std())
  np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())
  # The clipped result `stylize` returns is the same picture.
  out = msgnet.stylize(model, params, content[0], [style])
  np.testing.assert_allclose(out, np.clip(want[0], 0, 1), atol=2e-4 * np.abs(want).max())


def test_msgnet_stylizer_encodes_the_style_once(files, rng, monkeypatch):
  _, paths, _, _ = files
  style = rng.random((28, 36, 3)).astype(np.float32)
  contents = [rng.random((32, 40, 3)).astype(np.float32) for _ in range(2)]
  model, params, _ = msgnet_inference.load(paths["msgnet"])
  want = [msgnet.stylize(model, params, c, [style], preserve_color="luminance") for c in contents]
  calls = []
  real = msgnet_inference.style_gram
  monkeypatch.setattr(msgnet_inference, "style_gram",
                      lambda *a, **k: calls.append(1) or real(*a, **k))
  request = api.StylizeRequest(method="msgnet", content=contents[0], styles=[style],
                               checkpoint=paths["msgnet"], preserve_color="luminance")
  stylizer = msgnet_inference.make_stylizer(request)
  got = [stylizer(c) for c in contents]
  assert len(calls) == 1
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5)


def test_reference_size_networks_map_onto_the_default_configs():
  params, config = released_pth.convert_msgnet(MultiStyleNet().state_dict())
  assert config == msgnet.MSGNetConfig(output_offset=0.0)
  assert params["comatch"]["weight"].shape == (512, 512)
  _, config = released_pth.convert_johnson(ExamplesTransformerNet().state_dict())
  assert config.channels() == (32, 64, 128) and config.num_residual == 5


def test_bad_files_fail_clearly(files, tmp_path):
  nets, paths, sds, _ = files
  with pytest.raises(WeightsError, match="is not a pytorch/examples fast_neural_style"):
    johnson_inference.load_released(paths["msgnet"])
  with pytest.raises(WeightsError, match="is not a PyTorch-Multi-Style-Transfer MSG-Net"):
    msgnet_inference.load_released(paths["johnson"])
  sd = dict(sds["johnson"])
  sd["res2.conv1.conv2d.weight"] = sd["res2.conv1.conv2d.weight"][:, :, :2]
  sd["extra.weight"] = torch.zeros(3)
  with pytest.raises(WeightsError, match=r"unexpected extra.weight; wrong shape "
                                         r"res2\.conv1\.conv2d\.weight \(128, 128, 2, 3\)"):
    released_pth.convert_johnson(sd, "cut.pth")
  sd = dict(sds["msgnet"])
  sd["model1.0.conv2d.bias"] = sd["model1.0.conv2d.bias"] + 1.0
  with pytest.raises(WeightsError, match="model1.0.conv2d.bias and model.0.0.conv2d.bias should"):
    released_pth.convert_msgnet(sd, "twins.model")
  # Only the `model1`/`ins` names (a trimmed file) still convert.
  sd = {k: v for k, v in sds["msgnet"].items() if not k.startswith(("model.0.", "model.1."))}
  params, _ = released_pth.convert_msgnet(sd, "trimmed.model")
  np.testing.assert_array_equal(params["comatch"]["weight"], sds["msgnet"]["ins.weight"][0])
  (tmp_path / "torn.pth").write_bytes(open(paths["johnson"], "rb").read()[:5000])
  with pytest.raises(WeightsError, match="is not a readable PyTorch weights file"):
    johnson_inference.load_released(str(tmp_path / "torn.pth"))
  request = api.StylizeRequest(method="msgnet", content=np.zeros((16, 16, 3), np.float32),
                               style_index=[0], checkpoint=paths["msgnet"])
  with pytest.raises(ConfigError, match="records no training styles"):
    msgnet_inference.run_stylize(request)


def test_stylize_launcher_takes_released_files(files):
  _, paths, _, d = files
  rng = np.random.default_rng(1)
  for name in ("c.png", "s.png"):
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(str(d / name))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAXSTYLE_CACHE=str(d / "cache"), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  script = os.path.join(ROOT, "launch", "stylize.py")
  for method, extra in (("johnson", []), ("msgnet", [f"--style={d / 's.png'}"])):
    out = d / f"{method}.png"
    run = subprocess.run([sys.executable, script, f"--method={method}", "--size=48", "--grid",
                          f"--checkpoint={paths[method]}", f"--content={d / 'c.png'}",
                          f"--output={out}"] + extra, capture_output=True, text=True, env=env,
                         check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert Image.open(str(out)).size == (48, 40)
  bad = subprocess.run([sys.executable, script, "--method=johnson", "--size=48",
                        f"--checkpoint={paths['msgnet']}", f"--content={d / 'c.png'}",
                        f"--output={d / 'bad.png'}"], capture_output=True, text=True, env=env,
                       check=False)
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert "is not a pytorch/examples" in bad.stderr.strip().splitlines()[-1]
  assert not os.path.exists(str(d / "bad.png"))
