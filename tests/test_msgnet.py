"""MSG-Net: blocks and the whole network vs a PyTorch re-statement of the reference
`experiments/net.py`, multi-style data and training steps (the real loop and stylization:
`test_msgnet_stylize.py`).

Everything runs at 16-48 px with a narrow network (stem 8-16, ngf 4-8) and a randomly initialised
VGG16 loss network, so the file needs no downloaded weights.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.methods.msgnet import data as msg_data
from jaxstyle.methods.msgnet.model import MSGNet, MSGNetConfig
from jaxstyle.methods.msgnet.trainer import MSGNetTrainer
from jaxstyle.nn.bottleneck import Bottleneck, UpBottleneck

from _msgnet_common import TINY, write_styles


# --------------------------------------------------------------------------------------------------
# PyTorch reference, channels first, written from the structure of the reference `net.py`.


def _t(a):
  return torch.from_numpy(np.array(a, np.float32))


def _t_conv(x, p, stride=1, pad=0):
  """ReflectionPad2d(pad) + Conv2d, with a Flax {'kernel': HWIO, 'bias'} parameter dict."""
  if pad:
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
  return F.conv2d(x, _t(p["kernel"]).permute(3, 2, 0, 1), _t(p["bias"]), stride=stride)


def _t_norm_relu(x):
  return F.relu(F.instance_norm(x, eps=1e-5))  # nn.InstanceNorm2d default: affine=False


def _t_bottleneck(x, p, stride, downsample):
  residual = _t_conv(x, p["residual"]["conv"], stride) if downsample else x
  y = _t_conv(_t_norm_relu(x), p["conv1"]["conv"])
  y = _t_conv(_t_norm_relu(y), p["conv2"]["conv"], stride, pad=1)
  y = _t_conv(_t_norm_relu(y), p["conv3"]["conv"])
  return residual + y


def _t_up(x):
  return F.interpolate(x, scale_factor=2, mode="nearest")


def _t_up_bottleneck(x, p):
  residual = _t_conv(_t_up(x), p["residual"]["conv_layer"]["conv"])
  y = _t_conv(_t_norm_relu(x), p["conv1"]["conv"])
  y = _t_conv(_t_up(_t_norm_relu(y)), p["conv2"]["conv_layer"]["conv"], pad=1)
  y = _t_conv(_t_norm_relu(y), p["conv3"]["conv"])
  return residual + y


def _t_model1(x, p):
  x = _t_norm_relu(_t_conv(x, p["stem"]["conv"], pad=3))
  x = _t_bottleneck(x, p["down1"], 2, True)
  return _t_bottleneck(x, p["down2"], 2, True)


def _t_net(content_bgr, style_bgr, params, n_blocks, offset=0.0):
  """Net.setTarget(style) then Net.forward(content), BGR 0-255 NCHW in and out."""
  f = _t_model1(style_bgr, params["encoder"])
  b, c, h, w = f.shape
  f = f.reshape(b, c, h * w)
  gram = torch.bmm(f, f.transpose(1, 2)) / (c * h * w)
  x = _t_model1(content_bgr, params["encoder"])
  p = torch.bmm(_t(params["comatch"]["weight"])[None], gram)
  x = torch.bmm(p.transpose(1, 2).expand(x.shape[0], c, c), x.reshape(x.shape[0], c, -1))
  x = x.view(x.shape[0], c, content_bgr.shape[2] // 4, content_bgr.shape[3] // 4)
  dec = params["decoder"]
  for i in range(n_blocks):
    x = _t_bottleneck(x, dec[f"block{i}"], 1, False)
  x = _t_up_bottleneck(x, dec["up1"])
  x = _t_up_bottleneck(x, dec["up2"])
  return _t_conv(_t_norm_relu(x), dec["out_conv"]["conv"], pad=3) + offset


def _to_torch_bgr(x01):
  return _t(np.asarray(x01)[..., ::-1].copy() * 255.0).permute(0, 3, 1, 2)


def _random_params(tree, rng, scale=0.3):
  """Replaces every leaf with noise so biases are non-zero and the comparison is not trivial."""
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.normal(scale=scale, size=x.shape).astype(np.float32)), tree)


# --------------------------------------------------------------------------------------------------
# Blocks and network vs PyTorch


def _shapes(module, *args):
  """The parameter tree of `module` by shape only (the tests fill it with noise)."""
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))["params"]


@functools.partial(jax.jit, static_argnames=("module",))
def _apply(module, params, x):
  return module.apply({"params": params}, x)


@functools.partial(jax.jit, static_argnames=("model",))
def _net(model, params, content, style):
  """Style image -> G -> stylized content, in one compiled function."""
  gram = model.apply({"params": params}, style, method=MSGNet.style_gram)
  return model.apply({"params": params}, content, gram), gram


def _net_params(model, rng, scale=0.2):
  c = model.config.comatch_features
  return _random_params(_shapes(model, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, c, c))), rng, scale)


@pytest.mark.parametrize("strides,cin,hw", [(2, 6, (9, 11)), (1, 16, (8, 6)), (1, 5, (7, 7))])
def test_bottleneck_matches_torch(rng, strides, cin, hw):
  x = rng.normal(size=(2, *hw, cin)).astype(np.float32)
  block = Bottleneck(planes=4, strides=strides)
  params = _random_params(_shapes(block, x), rng)
  out = np.asarray(_apply(block, params, x))
  downsample = strides != 1 or cin != 16
  assert ("residual" in params) == downsample
  ref = _t_bottleneck(_t(x).permute(0, 3, 1, 2), params, strides, downsample)
  assert out.shape == (2, -(-hw[0] // strides), -(-hw[1] // strides), 16)
  np.testing.assert_allclose(out, ref.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)


def test_up_bottleneck_matches_torch(rng):
  x = rng.normal(size=(2, 5, 6, 12)).astype(np.float32)
  block = UpBottleneck(planes=3)
  params = _random_params(_shapes(block, x), rng)
  out = np.asarray(_apply(block, params, x))
  assert out.shape == (2, 10, 12, 12)
  ref = _t_up_bottleneck(_t(x).permute(0, 3, 1, 2), params)
  np.testing.assert_allclose(out, ref.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)


def test_network_matches_torch_reference(rng):
  cfg = MSGNetConfig(ngf=4, stem_features=16, n_blocks=2, output_offset=0.0)
  model = MSGNet(cfg)
  content = rng.uniform(size=(2, 16, 20, 3)).astype(np.float32)
  style = rng.uniform(size=(1, 12, 16, 3)).astype(np.float32)
  params = _net_params(model, rng)
  out, _ = _net(model, params, content, style)
  ref = _t_net(_to_torch_bgr(content), _to_torch_bgr(style), params, cfg.n_blocks)
  ref01 = ref.permute(0, 2, 3, 1).numpy()[..., ::-1] / 255.0  # BGR 0-255 -> RGB [0, 1]
  assert out.shape == content.shape
  np.testing.assert_allclose(np.asarray(out), ref01, rtol=2e-3, atol=2e-3 * np.abs(ref01).max())


def _reference_param_count(ngf=128, n_blocks=6):
  """Parameters of the reference Net(ngf) counted from its layer list (conv weights + biases)."""
  def conv(cin, cout, k):
    return cin * cout * k * k + cout

  def bottleneck(cin, planes, down):
    n = conv(cin, planes, 1) + conv(planes, planes, 3) + conv(planes, 4 * planes, 1)
    return n + (conv(cin, 4 * planes, 1) if down else 0)

  def up_bottleneck(cin, planes):
    return conv(cin, 4 * planes, 1) + conv(cin, planes, 1) + conv(planes, planes, 3) + conv(
        planes, 4 * planes, 1)

  model1 = conv(3, 64, 7) + bottleneck(64, 32, True) + bottleneck(128, ngf, True)
  ins = (4 * ngf) ** 2
  rest = n_blocks * bottleneck(4 * ngf, ngf, False) + up_bottleneck(4 * ngf, 32) + up_bottleneck(
      128, 16) + conv(64, 3, 7)
  return model1 + ins + rest


def test_default_config_has_reference_layout():
  cfg = MSGNetConfig()
  shapes = jax.eval_shape(
      lambda r: MSGNet(cfg).init(r, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 512, 512))),
      jax.random.PRNGKey(0))["params"]
  n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
  assert n == _reference_param_count()
  assert shapes["comatch"]["weight"].shape == (512, 512)
  assert shapes["decoder"]["out_conv"]["conv"]["kernel"].shape == (7, 7, 64, 3)


@pytest.mark.parametrize("hw", [(18, 23), (5, 7)])
def test_any_content_size_keeps_its_shape(rng, hw):
  model = MSGNet(TINY)
  c = TINY.comatch_features
  x = rng.uniform(size=(2, *hw, 3)).astype(np.float32)
  out, gram = _net(model, _net_params(model, rng), x,
                   rng.uniform(size=(1, 11, 14, 3)).astype(np.float32))
  assert gram.shape == (1, c, c) and gram.dtype == jnp.float32
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))


def test_bf16_compute_keeps_f32_params(rng):
  x = rng.uniform(size=(1, 16, 16, 3)).astype(np.float32)
  params = _net_params(MSGNet(TINY), rng, scale=0.1)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  y32, _ = _net(MSGNet(TINY), params, x, x)
  y16, _ = _net(MSGNet(TINY, dtype=jnp.bfloat16), params, x, x)
  assert y16.dtype == jnp.float32
  y32 = np.asarray(y32)
  np.testing.assert_allclose(np.asarray(y16), y32, atol=0.05 * float(np.abs(y32).max()) + 1e-3)



@pytest.fixture
def style_dir(tmp_path):
  return write_styles(str(tmp_path / "styles"))


class _Content:
  """Deterministic random content crops (stands in for an ImageFolder)."""

  def __init__(self, size=16, seed=0):
    self.size, self.seed = size, seed

  def batch(self, step, batch_size):
    r = np.random.default_rng([self.seed, step])
    return r.uniform(size=(batch_size, self.size, self.size, 3)).astype(np.float32)


def test_dataset_deterministic_one_style_per_step_bucketed(style_dir):
  styles, paths = msg_data.load_styles(style_dir, 24)
  assert [os.path.basename(p) for p in paths] == ["a_stripes.png", "b_smooth.png", "c_checker.png"]
  ds = msg_data.MultiStyleDataset(_Content(), styles, (16, 24), seed=3)
  seen_styles, seen_sizes = set(), set()
  for step in range(24):
    b = ds.batch(step, 4)
    again = ds.batch(step, 4)
    for k in b:
      np.testing.assert_array_equal(b[k], again[k])
    s = b["style"]
    assert s.shape[0] == 4 and s.shape[1] == s.shape[2] and s.shape[1] in (16, 24)
    np.testing.assert_array_equal(s, np.broadcast_to(s[:1], s.shape))  # one style per step
    seen_styles.add(int(b["style_index"][0]))
    seen_sizes.add(s.shape[1])
  assert seen_styles == {0, 1, 2} and seen_sizes == {16, 24}
  other = msg_data.MultiStyleDataset(_Content(), styles, (16, 24), seed=4)
  assert [other.choice(i) for i in range(24)] != [ds.choice(i) for i in range(24)]


def test_load_styles_skips_unreadable_and_rejects_empty(tmp_path, style_dir):
  with open(os.path.join(style_dir, "broken.jpg"), "wb") as f:
    f.write(b"not a jpeg")
  _, paths = msg_data.load_styles(style_dir, 16)
  assert len(paths) == 3
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConfigError, match="no images"):
    msg_data.load_styles(str(empty), 16)
  (empty / "x.png").write_bytes(b"junk")
  with pytest.raises(ConfigError, match="no readable"):
    msg_data.load_styles(str(empty), 16)
  images, paths = msg_data.load_styles(None, 20)
  assert paths == ["<sample>"] and max(images[0].shape[:2]) == 20


# --------------------------------------------------------------------------------------------------
# Training


def _trainer(config=TINY, lr=None):
  return MSGNetTrainer(config, vgg.random_loss_net(0), learning_rate=lr)


def _device_batch(ds, step, batch_size):
  return {k: jnp.asarray(v) for k, v in ds.batch(step, batch_size).items()}


def test_train_step_metrics_and_falling_loss(style_dir, long_run):
  styles, _ = msg_data.load_styles(style_dir, 16)
  # One style at one size: a clean check that the optimisation makes progress. The long form
  # trains on all styles at both sizes.
  steps = 300 if long_run else 12
  ds = msg_data.MultiStyleDataset(_Content(seed=1), styles if long_run else styles[:1],
                                  (16, 24) if long_run else (16,), seed=0)
  trainer = _trainer(lr=1e-2)
  state = trainer.init(jax.random.PRNGKey(0), _device_batch(ds, 0, 2))
  step = jax.jit(trainer.train_step)
  losses = []
  for i in range(steps):
    state, metrics = step(state, _device_batch(ds, i, 2), jax.random.PRNGKey(i))
    losses.append({k: float(v) for k, v in metrics.items()})
  assert {"loss", "content", "style", "tv"} <= set(losses[0])
  np.testing.assert_allclose(losses[0]["loss"], losses[0]["content"] + losses[0]["style"] +
                             losses[0]["tv"], rtol=1e-5)
  total = np.array([l["loss"] for l in losses])
  assert np.all(np.isfinite(total))
  k = max(2, steps // 10)
  assert total[-k:].mean() < (0.3 if long_run else 0.7) * total[:k].mean(), total
