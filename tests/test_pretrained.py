"""pretrained/: the converters versus PyTorch, and their loud failures on bad files."""
import h5py
import jax
import numpy as np
import pytest

from jaxstyle import vgg
from jaxstyle.errors import WeightsError
from pretrained import converted
from pretrained import formats
from pretrained import keras_h5
from pretrained import torchvision_pth

torch = pytest.importorskip("torch")

from _vgg_files import rel_err, write_hed_h5  # noqa: E402  (needs torch)


def _torchvision_input(x01):
  """RGB [0, 1] -> torchvision's input, with the constants written out (not vgg.IMAGENET_*)."""
  return (x01 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])


def _caffe_input(x01):
  """RGB [0, 1] -> Caffe's BGR 0-255 minus the BGR mean, written out (not vgg.preprocess)."""
  return x01[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68])


# ---------------------------------------------------------------- (a) torchvision .pth

@pytest.mark.parametrize("depth", [16, 19])
def test_pth_conversion_matches_torch_forward(pth_files, depth, rng):
  models, paths = pth_files
  params, found, _ = formats.convert_file(paths[depth])  # depth inferred from the keys
  assert found == depth
  assert sorted(params) == sorted(vgg.conv_names(depth))
  net = vgg.LossNet(params=params, depth=depth, convention="torchvision")
  x01 = rng.random((2, 32, 32, 3)).astype(np.float32)
  x = torch.from_numpy(np.transpose(_torchvision_input(x01), (0, 3, 1, 2)).astype(np.float32))
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
  x = _torchvision_input(smooth_image[None]).astype(np.float32)
  want = models[16].named_activations(torch.from_numpy(np.transpose(x, (0, 3, 1, 2))), 16)
  assert rel_err(net.features(smooth_image[None], ["relu3_3"])["relu3_3"], want["relu3_3"]) < 1e-4


def test_caffe_pth_conversions_take_caffe_input(pth_files, tmp_path, smooth_image):
  # neural-style-pt's Caffe VGGs have torchvision's keys but expect BGR 0-255 minus the mean.
  import shutil  # pylint: disable=g-import-not-at-top
  models, paths = pth_files
  caffe = str(tmp_path / torchvision_pth.CAFFE_FILES[16])
  shutil.copy(paths[16], caffe)
  params, depth, convention = formats.convert_file(caffe)
  assert (depth, convention) == (16, "caffe")
  assert formats.convert_file(paths[16])[2] == "torchvision"
  assert formats.convert_file(paths[16], convention="caffe")[2] == "caffe"
  assert formats.convert_file(caffe, convention="torchvision")[2] == "torchvision"
  net = vgg.load_loss_net(caffe, cache_dir=str(tmp_path / "c"))
  assert net.convention == "caffe"
  x = _caffe_input(smooth_image[None]).astype(np.float32)
  want = models[16].named_activations(torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy()), 16)
  assert rel_err(net.features(smooth_image[None], ["relu2_2"])["relu2_2"], want["relu2_2"]) < 1e-4
  out = str(tmp_path / "caffe.msgpack")
  converted.save(out, params, depth, convention)
  with pytest.raises(WeightsError, match="converted for caffe input, not torchvision"):
    formats.convert_file(out, convention="torchvision")
  with pytest.raises(WeightsError, match="unknown VGG convention 'bgr'"):
    formats.convert_file(caffe, convention="bgr")


# ---------------------------------------------------------------- (b) Keras / HED .h5

def test_hed_h5_conversion_matches_torch_conv(hed_file, rng):
  path, reference = hed_file
  params = keras_h5.convert_h5(path, depth=16)
  for layer in vgg.conv_names(16):
    np.testing.assert_array_equal(params[layer]["kernel"], reference[layer]["kernel"])
  net = vgg.LossNet(params=params, depth=16, convention="caffe")
  x01 = rng.random((1, 32, 32, 3)).astype(np.float32)
  x = torch.from_numpy(np.transpose(_caffe_input(x01), (0, 3, 1, 2)).astype(np.float32).copy())
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


@pytest.mark.parametrize("suffix", [":0", ""])  # some Keras versions drop the ':0'
def test_keras_applications_layout(tmp_path, suffix):
  path = str(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
  rng = np.random.default_rng(1)
  want = {}
  with h5py.File(path, "w") as f:
    for layer, shapes in vgg.param_shapes(16).items():
      name = f"block{layer[4]}_conv{layer[6:]}"
      for leaf in ("kernel", "bias"):
        want[(layer, leaf)] = rng.standard_normal(shapes[leaf], np.float32)
        f.create_dataset(f"{name}/{name}/{leaf}{suffix}", data=want[(layer, leaf)])
    f.create_dataset(f"fc1/fc1/kernel{suffix}", data=np.zeros((4, 4)))
  params, depth, convention = formats.convert_file(path)
  assert (depth, convention) == (16, "caffe")
  assert sorted(params) == sorted(vgg.conv_names(16))
  for (layer, leaf), value in want.items():
    np.testing.assert_array_equal(params[layer][leaf], value)


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
  torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pth")  # a whole pickled module, not a state dict
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
    formats.convert_file(paths[19], depth=16)
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
