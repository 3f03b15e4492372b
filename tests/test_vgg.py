"""jaxstyle.vgg: layer tables, preprocessing, VGG against PyTorch, LossNet under jit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import vgg
from jaxstyle.errors import ConfigError, WeightsError

torch = pytest.importorskip("torch")
F = torch.nn.functional

WIDTHS = (4, 8, 8, 16, 16)  # narrow random networks keep these tests fast


def test_layer_tables():
  assert len(vgg.LAYERS16) == 13 * 2 + 5 and len(vgg.LAYERS19) == 16 * 2 + 5
  assert vgg.LAYERS16[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
  assert vgg.LAYERS19[-3:] == ("conv5_4", "relu5_4", "pool5")
  assert vgg.conv_names(16)[-1] == "conv5_3" and len(vgg.conv_names(19)) == 16
  shapes = vgg.param_shapes(19)
  assert shapes["conv1_1"] == {"kernel": (3, 3, 3, 64), "bias": (64,)}
  assert shapes["conv3_4"]["kernel"] == (3, 3, 256, 256)
  assert shapes["conv4_1"]["kernel"] == (3, 3, 256, 512)
  assert vgg.layer_channels("relu4_1") == 512 and vgg.layer_channels("pool2") == 128
  assert vgg.layer_stride("relu1_1") == 1 and vgg.layer_stride("relu3_1") == 4
  assert vgg.layer_stride("pool5") == 32


def test_check_layers_names_valid_ones():
  assert vgg.check_layers(["relu1_1", "pool3"]) == ("relu1_1", "pool3")
  assert vgg.check_layers("relu5_4", 19) == ("relu5_4",)
  with pytest.raises(ConfigError, match=r"unknown VGG16 layer\(s\) relu5_4.*valid: conv1_1"):
    vgg.check_layers(["relu1_1", "relu5_4"], 16)
  with pytest.raises(ConfigError, match="at least one"):
    vgg.check_layers([])
  with pytest.raises(ConfigError, match="16 or 19"):
    vgg.layer_names(11)


def test_preprocess_matches_numpy(rng):
  x = rng.random((2, 5, 7, 3)).astype(np.float32)
  caffe = np.asarray(vgg.preprocess(x, "caffe"))
  want = x[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68], np.float32)
  np.testing.assert_allclose(caffe, want, rtol=1e-6, atol=1e-4)
  tv = np.asarray(vgg.preprocess(x, "torchvision"))
  want = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(tv, want, rtol=1e-5, atol=1e-5)
  for convention in vgg.CONVENTIONS:
    back = vgg.deprocess(vgg.preprocess(x, convention), convention)
    np.testing.assert_allclose(np.asarray(back), x, atol=1e-5)
  with pytest.raises(ConfigError, match="convention"):
    vgg.preprocess(x, "bgr")


def _torch_forward(params, x_nhwc, depth, pooling, padding):
  """Reference VGG in PyTorch (NCHW) from jaxstyle params: every activation by name."""
  out = {}
  h = torch.from_numpy(np.transpose(np.asarray(x_nhwc), (0, 3, 1, 2)).copy())
  for b, n in enumerate(vgg.BLOCKS[depth], start=1):
    for i in range(1, n + 1):
      p = params[f"conv{b}_{i}"]
      w = torch.from_numpy(np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1)).copy())
      bias = torch.from_numpy(np.array(p["bias"]))
      if padding == "reflect":
        h = F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), w, bias)
      else:
        h = F.conv2d(h, w, bias, padding=1)
      out[f"conv{b}_{i}"] = h
      h = F.relu(h)
      out[f"relu{b}_{i}"] = h
    h = F.max_pool2d(h, 2, 2) if pooling == "max" else F.avg_pool2d(h, 2, 2)
    out[f"pool{b}"] = h
  return {k: np.transpose(v.numpy(), (0, 2, 3, 1)) for k, v in out.items()}


@pytest.mark.parametrize("depth,pooling,padding", [(16, "max", "zero"), (19, "avg", "reflect")])
def test_vgg_matches_torch(depth, pooling, padding, rng):
  params = vgg.init_params(depth, depth, WIDTHS)
  x = rng.standard_normal((2, 35, 32, 3)).astype(np.float32)  # odd height: pooling floors
  layers = vgg.layer_names(depth)
  got = vgg.VGG(depth, pooling, padding, WIDTHS).apply({"params": params}, x, layers)
  want = _torch_forward(params, x, depth, pooling, padding)
  for name in layers:
    assert got[name].shape == want[name].shape, name
    scale = np.abs(want[name]).max()
    assert np.abs(np.asarray(got[name]) - want[name]).max() <= 1e-4 * scale + 1e-7, name


def test_vgg_stops_after_deepest_requested_layer():
  module = vgg.VGG(16, widths=WIDTHS)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                                              ("relu1_1", "conv2_1")))
  assert sorted(shapes["params"]) == ["conv1_1", "conv1_2", "conv2_1"]
  # Parameters of deeper layers may be present (a full pretrained tree) and are simply unused.
  variables = {"params": vgg.init_params(0, 16, WIDTHS)}
  out = module.apply(variables, jnp.zeros((1, 16, 16, 3)), ("conv2_1", "relu1_1"))
  assert list(out) == ["conv2_1", "relu1_1"]
  assert out["conv2_1"].shape == (1, 8, 8, 8) and out["relu1_1"].shape == (1, 16, 16, 4)


def test_loss_net_is_a_jit_argument_and_traces_once(smooth_image, stripes_image):
  net_a = vgg.random_loss_net(0, widths=WIDTHS)
  net_b = vgg.random_loss_net(1, widths=WIDTHS)
  traces = []

  @jax.jit
  def gram(net, x):
    traces.append(1)
    f = net.features(x, ("relu2_1",))["relu2_1"]
    return jnp.einsum("bhwc,bhwd->bcd", f, f) / (f.shape[1] * f.shape[2])

  x = jnp.stack([smooth_image, stripes_image])
  ga, gb = gram(net_a, x), gram(net_b, x)
  assert len(traces) == 1  # parameters are traced arguments, not baked-in constants
  assert not np.allclose(ga, gb)
  assert not np.allclose(ga[0], ga[1])
  leaves, treedef = jax.tree_util.tree_flatten(net_a)
  assert len(leaves) == 2 * 13
  rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
  assert rebuilt.convention == "caffe" and rebuilt.widths == WIDTHS
  # Another static setting is another treedef, hence a new trace.
  gram(net_a.replace_options(pooling="avg"), x)
  assert len(traces) == 2


def test_loss_net_single_image_and_conventions(smooth_image):
  net = vgg.random_loss_net(3, widths=WIDTHS)
  single = net.features(smooth_image, ["relu1_2", "pool1"])
  batched = net.features(smooth_image[None], ["relu1_2", "pool1"])
  assert single["pool1"].shape == (24, 32, 4)
  np.testing.assert_allclose(single["relu1_2"], batched["relu1_2"][0], rtol=1e-6)
  # The convention decides the input transform: same params, other convention, other features.
  tv = net.replace(convention="torchvision").features(smooth_image, ["relu1_2"])["relu1_2"]
  assert not np.allclose(tv, single["relu1_2"])
  want = net.module().apply({"params": net.params}, vgg.preprocess(smooth_image[None], "caffe"),
                            ["relu1_2"])["relu1_2"][0]
  np.testing.assert_allclose(single["relu1_2"], want, rtol=1e-6)
  assert net.channels("relu3_1") == 8
  with pytest.raises(ConfigError, match="images"):
    net.features(np.zeros((1, 8, 8, 4), np.float32), ["relu1_1"])


def test_mixed_precision_features(smooth_image):
  net = vgg.random_loss_net(0, widths=WIDTHS)
  full = net.features(smooth_image, ["relu2_2"])["relu2_2"]
  half = net.features(smooth_image, ["relu2_2"], dtype=jnp.bfloat16)["relu2_2"]
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), full, rtol=0.1, atol=0.05 * float(
      jnp.abs(full).max()))


def test_load_loss_net_rejects_bad_arguments(tmp_path):
  with pytest.raises(ConfigError, match="pooling"):
    vgg.load_loss_net("hed-vgg16", cache_dir=str(tmp_path), pooling="min")
  with pytest.raises(ConfigError, match="padding"):
    vgg.load_loss_net("hed-vgg16", cache_dir=str(tmp_path), padding="same")
  with pytest.raises(WeightsError, match="unknown weights 'vgg-42'.*hed-vgg16"):
    vgg.load_loss_net("vgg-42", cache_dir=str(tmp_path))
  with pytest.raises(WeightsError, match="directory"):
    vgg.load_loss_net(str(tmp_path), cache_dir=str(tmp_path))
