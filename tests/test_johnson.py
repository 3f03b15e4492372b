"""Johnson et al. perceptual-loss networks: model vs PyTorch, training, checkpoints, controls."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import api
from jaxstyle import image
from jaxstyle import vgg
from jaxstyle.errors import CheckpointError, ConfigError
from jaxstyle.methods import johnson
from jaxstyle.methods.johnson import trainer as johnson_trainer
from jaxstyle.train import loop

torch = pytest.importorskip("torch")

VGG_WIDTHS = (8, 16, 16, 32, 32)
TINY = johnson.JohnsonConfig(width=0.125, num_residual=2, style_size=32)


@pytest.fixture(scope="module")
def loss_net():
  """A randomly initialised narrow Caffe-convention VGG16 (no pretrained weights in tests)."""
  return vgg.LossNet(params=vgg.init_params(1, 16, widths=VGG_WIDTHS), depth=16, convention="caffe",
                     widths=VGG_WIDTHS)


def _content(n, size=32, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Model


class _TorchTransformerNet(torch.nn.Module):
  """pytorch/examples fast_neural_style TransformerNet, widths and block count as parameters."""

  def __init__(self, c1, c2, c3, num_residual):
    super().__init__()
    nn = torch.nn

    def conv(cin, cout, k, s=1):
      return nn.Sequential(nn.ReflectionPad2d(k // 2), nn.Conv2d(cin, cout, k, s))

    def norm(c):
      return nn.InstanceNorm2d(c, affine=True)

    self.down = nn.ModuleList([conv(3, c1, 9), norm(c1), conv(c1, c2, 3, 2), norm(c2),
                               conv(c2, c3, 3, 2), norm(c3)])
    self.res = nn.ModuleList([nn.ModuleList([conv(c3, c3, 3), norm(c3), conv(c3, c3, 3), norm(c3)])
                              for _ in range(num_residual)])
    self.up = nn.ModuleList([conv(c3, c2, 3), norm(c2), conv(c2, c1, 3), norm(c1)])
    self.out = conv(c1, 3, 9)

  def forward(self, x):
    relu = torch.relu
    for i in range(0, 6, 2):
      x = relu(self.down[i + 1](self.down[i](x)))
    for c1, n1, c2, n2 in self.res:
      x = x + n2(c2(relu(n1(c1(x)))))
    for i in range(0, 4, 2):
      x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
      x = relu(self.up[i + 1](self.up[i](x)))
    return self.out(x)


def _set_conv(seq, p):
  kernel = np.asarray(p["conv"]["kernel"]).transpose(3, 2, 0, 1).copy()
  seq[1].weight.data = torch.from_numpy(kernel)
  seq[1].bias.data = torch.from_numpy(np.array(p["conv"]["bias"]))


def _set_norm(mod, p):
  mod.weight.data = torch.from_numpy(np.array(p["scale"]))
  mod.bias.data = torch.from_numpy(np.array(p["bias"]))


def _torch_from_params(params, config):
  net = _TorchTransformerNet(*config.channels(), config.num_residual)
  for i, name in enumerate(("conv1", "conv2", "conv3")):
    _set_conv(net.down[2 * i], params[f"{name}_conv"])
    _set_norm(net.down[2 * i + 1], params[f"{name}_norm"])
  for i, (c1, n1, c2, n2) in enumerate(net.res):
    p = params[f"res{i + 1}"]
    _set_conv(c1, p["conv1"])
    _set_norm(n1, p["norm1"])
    _set_conv(c2, p["conv2"])
    _set_norm(n2, p["norm2"])
  for i, name in enumerate(("up1", "up2")):
    _set_conv(net.up[2 * i], params[f"{name}_conv"]["conv_layer"])
    _set_norm(net.up[2 * i + 1], params[f"{name}_norm"])
  _set_conv(net.out, params["out_conv"])
  return net


def test_transformer_net_matches_pytorch_examples():
  # pytorch/examples' network has a linear output; the tanh output is checked against it below.
  config = dataclasses.replace(TINY, width=0.25, output="linear")
  model = johnson.TransformerNet(config)
  x = _content(2, 32, seed=3)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
  assert params["conv3_conv"]["conv"]["kernel"].shape == (3, 3, 16, 32)
  assert params["conv1_conv"]["conv"]["kernel"].shape == (9, 9, 3, 8)
  # Non-trivial norm parameters so that the affine part is checked too.
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(len(str(path))), a.shape)
      if "norm" in str(path) else a, params)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(x)))
  assert ours.shape == (2, 32, 32, 3)
  ref_net = _torch_from_params(params, config)
  with torch.no_grad():
    ref = ref_net(torch.from_numpy(x.transpose(0, 3, 1, 2) * 255.0)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, ref / 255.0, rtol=1e-4, atol=1e-4 * np.abs(ref / 255).max())
  # fast-neural-style's output: 150 * tanh(last conv) around the ImageNet mean pixel, on 0-255.
  tanh_model = johnson.TransformerNet(dataclasses.replace(config, output="tanh"))
  tanh_out = np.asarray(jax.jit(tanh_model.apply)({"params": params}, jnp.asarray(x)))
  want = (150.0 * np.tanh(ref) + 255.0 * np.array([0.485, 0.456, 0.406])) / 255.0
  np.testing.assert_allclose(tanh_out, want, rtol=1e-4, atol=1e-4)
  # Odd sizes go through `stylize`, which pads to a multiple of 4 and crops back.
  out = johnson.stylize(model, params, _content(1, 30)[0, :, :27])
  assert out.shape == (30, 27, 3) and out.min() >= 0 and out.max() <= 1


# --------------------------------------------------------------------------------------------------
# Training


def _trainer(loss_net, config=TINY, lr=1e-2):
  style = image.resize_long_side(image.sample_style(), config.style_size)
  return johnson.JohnsonTrainer(config, loss_net, style, learning_rate=lr)


def test_train_step_loss_falls(loss_net):
  trainer = _trainer(loss_net)
  batch = {"content": jnp.asarray(_content(2))}
  state = jax.jit(trainer.init)(jax.random.PRNGKey(0), batch)
  step = jax.jit(trainer.train_step)
  losses = []
  for i in range(4):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    losses.append(float(metrics["loss"]))
  assert set(metrics) >= {"loss", "content", "style", "tv"}
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  assert state.frozen["style_grams"]["relu1_2"].shape == (1, 8, 8)
  assert jax.jit(trainer.sample)(state, batch).shape == (2, 32, 32, 3)


def _request(tmp_path, steps, **kw):
  return api.TrainRequest(method="johnson", content_dir=None, style_dir=None,
                          workdir=str(tmp_path / "run"), image_size=32, batch_size=2, steps=steps,
                          checkpoint_every=100, log_every=100, summary_every=100, **kw)


def test_checkpoint_round_trip_and_stylize(tmp_path, loss_net):
  trainer = _trainer(loss_net)
  dataset = johnson_trainer.ContentDataset(None, 32, seed=0)
  request = _request(tmp_path, steps=2)
  state = loop.train(trainer, dataset, request)
  model, params, config = johnson.load(request.workdir)
  assert config == TINY
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.device_get(state.params))
  content = image.resize_long_side(image.sample_content(), 40)
  expected = jax.jit(trainer.sample)(state, {"content": content[None]})
  expected = np.clip(np.asarray(expected)[0], 0, 1)
  out = api.get_method("johnson").run_stylize(api.StylizeRequest(
      method="johnson", content=content, checkpoint=request.workdir))
  np.testing.assert_allclose(out, expected, atol=1e-5)

  # Controls: luminance keeps the content's chrominance; unsupported controls are one-line errors.
  kept = johnson.run_stylize(api.StylizeRequest(
      method="johnson", content=content, checkpoint=request.workdir, preserve_color="luminance"))
  np.testing.assert_allclose(kept, image.luminance_transfer(content, out), atol=1e-6)
  for bad in (dict(masks=[np.ones(content.shape[:2])]), dict(alpha=0.5), dict(style_index=[1]),
              dict(style_size=64), dict(preserve_color="histogram"), dict(checkpoint=None)):
    with pytest.raises(ConfigError):
      johnson.run_stylize(api.StylizeRequest(
          **{"method": "johnson", "content": content, "checkpoint": request.workdir, **bad}))
  with pytest.raises(CheckpointError):
    johnson.load(str(tmp_path))


def test_make_trainer_reads_style_and_overrides(tmp_path, monkeypatch, loss_net, stripes_image):
  monkeypatch.setattr(vgg, "load_loss_net", lambda weights, **kw: loss_net)
  styles = tmp_path / "styles"
  styles.mkdir()
  image.save_image(str(styles / "b.png"), stripes_image)
  image.save_image(str(styles / "a.png"), 1 - stripes_image)
  request = _request(tmp_path, 1, overrides={"width": "0.125", "num_residual": "1",
                                              "style_weight": "7", "style_size": "24"})
  request.style_dir = str(styles)
  trainer, dataset = johnson.make_trainer(request)
  assert trainer.config.style_weight == 7.0 and trainer.config.num_residual == 1
  assert trainer.style_path.endswith("a.png") and max(trainer.style01.shape) == 24
  b0, b1 = dataset.batch(3, 2), dataset.batch(3, 2)
  assert b0["content"].shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(b0["content"], b1["content"])
  with pytest.raises(ConfigError):
    johnson.make_trainer(_request(tmp_path, 1, overrides={"no_such_key": "1"}))
  with pytest.raises(ConfigError):
    johnson.make_trainer(_request(tmp_path, 1, overrides={"content_layers": "relu9_9"}))


def test_training_loss_falls_clearly(tmp_path, loss_net, long_run):
  """A short run by default, a few hundred steps under --runslow: the loss must fall clearly."""
  steps = 300 if long_run else 30
  trainer = _trainer(loss_net, lr=5e-3)
  dataset = johnson_trainer.ContentDataset(None, 32, seed=0)
  losses = []
  loop.train(trainer, dataset, _request(tmp_path, steps),
             hooks=[lambda step, state, metrics: losses.append(float(metrics["loss"]))])
  first, last = np.mean(losses[:3]), np.mean(losses[-3:])
  assert last < (0.3 if long_run else 0.7) * first, (first, last)
