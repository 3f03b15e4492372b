"""Magenta arbitrary stylization: networks vs PyTorch/NumPy, training through the loop, controls."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import api
from jaxstyle import export
from jaxstyle import image
from jaxstyle import vgg
from jaxstyle.errors import CheckpointError, ConfigError
from jaxstyle.methods import magenta
from jaxstyle.methods.magenta import inference as magenta_inference
from jaxstyle.methods.magenta import model as magenta_model
from jaxstyle.train import loop

TINY = magenta.MagentaConfig(width=1 / 8, num_residual=2, bottleneck=8)  # widths 4 / 8 / 16


@pytest.fixture(scope="module")
def loss_net():
  """A narrow, randomly initialised Caffe-convention VGG16 (no pretrained weights in tests)."""
  return vgg.random_loss_net(2, 16)


# --------------------------------------------------------------------------------------------------
# Model


def test_thirteen_conditional_layers_at_reference_size():
  layers = magenta_model.normalized_layers(magenta.MagentaConfig())
  assert len(layers) == 13 and sum(layers.values()) == 10 * 128 + 64 + 32 + 3


def test_pooled_features_and_heads_match_numpy():
  rng = np.random.default_rng(0)
  feats = {"a": rng.uniform(0, 50, (2, 4, 5, 3)).astype(np.float32),
           "b": rng.uniform(0, 5, (2, 2, 2, 6)).astype(np.float32)}
  pooled = np.asarray(magenta_model.pooled_features(feats, ("a", "b")))
  ref = np.log1p(np.concatenate([feats["a"].mean((1, 2)), feats["b"].mean((1, 2))], -1))
  np.testing.assert_allclose(pooled, ref, rtol=1e-5)

  heads = magenta_model.StyleNormParams({"x": 3, "y": 2})
  e = rng.normal(size=(2, 4)).astype(np.float32)
  params = heads.init(jax.random.PRNGKey(0), e)["params"]
  out = heads.apply({"params": params}, e)
  for name in ("x", "y"):
    for i, part in enumerate(("gamma", "beta")):
      p = params[f"{name}_{part}"]
      np.testing.assert_allclose(np.asarray(out[name][i]),
                                 e @ np.asarray(p["kernel"]) + np.asarray(p["bias"]), rtol=1e-5,
                                 atol=1e-6)
  # An untrained network starts as plain instance norm: gamma ~ 1, beta ~ 0.
  zero = heads.apply({"params": params}, np.zeros((1, 4), np.float32))
  np.testing.assert_allclose(np.asarray(zero["x"][0]), 1.0)
  np.testing.assert_allclose(np.asarray(zero["x"][1]), 0.0)


def _torch_transformer(torch, params, style_params, x, config):
  """The reference transformer (nza_model.transform, instance norm in the contract path)."""
  f = torch.nn.functional
  t = lambda a: torch.from_numpy(np.asarray(a, np.float32).copy())  # noqa: E731

  def conv(h, p, stride=1):
    k = np.asarray(p["conv"]["kernel"])
    h = f.pad(h, (k.shape[0] // 2,) * 4, mode="reflect")
    return f.conv2d(h, t(k.transpose(3, 2, 0, 1)), t(p["conv"]["bias"]), stride=stride)

  def cond(h, name):
    gamma, beta = style_params[name]
    return f.instance_norm(h, eps=1e-5) * t(gamma)[:, :, None, None] + t(beta)[:, :, None, None]

  p = params["transformer"]
  h = t(x).permute(0, 3, 1, 2)
  for name, stride in (("contract1", 1), ("contract2", 2), ("contract3", 2)):
    h = conv(h, p[name], stride)
    n = p[f"{name}_norm"]
    h = torch.relu(f.instance_norm(h, weight=t(n["scale"]), bias=t(n["bias"]), eps=1e-5))
  for i in range(1, config.num_residual + 1):
    r = torch.relu(cond(conv(h, p[f"res{i}_conv1"]), f"res{i}_conv1"))
    h = h + cond(conv(r, p[f"res{i}_conv2"]), f"res{i}_conv2")
  for name in ("expand1", "expand2"):
    h = f.interpolate(h, scale_factor=2, mode="nearest")
    h = torch.relu(cond(conv(h, p[name]["conv_layer"]), name))
  h = torch.sigmoid(cond(conv(h, p["expand3"]), "expand3"))
  return h.permute(0, 2, 3, 1).numpy()


def test_network_matches_pytorch_reference():
  torch = pytest.importorskip("torch")
  net = magenta.ArbitraryStyleNet(TINY)
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
  pooled = rng.uniform(0, 3, (2, 10)).astype(np.float32)
  params = net.init(jax.random.PRNGKey(0), x, pooled)["params"]
  # Larger head weights, so gamma/beta differ per layer and per sample.
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: a * 30.0 if "norm_params" in str(path) and "kernel" in str(path) else a,
      params)
  ours = np.asarray(net.apply({"params": params}, x, pooled))
  e = np.asarray(net.apply({"params": params}, pooled, method="embed"))
  np.testing.assert_allclose(
      e, pooled @ np.asarray(params["predictor"]["bottleneck"]["kernel"])
      + np.asarray(params["predictor"]["bottleneck"]["bias"]), rtol=1e-4, atol=1e-5)
  style_params = {}
  for name in magenta_model.normalized_layers(TINY):
    g, b = params["norm_params"][f"{name}_gamma"], params["norm_params"][f"{name}_beta"]
    style_params[name] = (e @ np.asarray(g["kernel"]) + np.asarray(g["bias"]),
                          e @ np.asarray(b["kernel"]) + np.asarray(b["bias"]))
  assert np.abs(style_params["res1_conv1"][0] - 1).max() > 0.05
  with torch.no_grad():
    ref = _torch_transformer(torch, params, style_params, x, TINY)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-5)


# --------------------------------------------------------------------------------------------------
# Training through the shared loop


class _FixedPairs:
  """One content/style batch at every step, so the loss must fall."""

  def __init__(self, size=32):
    rng = np.random.default_rng(0)
    self.content = rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32)
    style = image.resize(image.sample_style(), (size, size))
    self.style = np.stack([style, style[:, ::-1]])

  def batch(self, step, batch_size):
    del step
    return {"content": self.content[:batch_size], "style": self.style[:batch_size]}


def _request(workdir, steps, **kw):
  return api.TrainRequest(method="magenta", content_dir=None, style_dir=None,
                          workdir=str(workdir), image_size=32, batch_size=2, steps=steps,
                          checkpoint_every=1000, log_every=1000, summary_every=1000, **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory, pytestconfig, loss_net):
  """Trains a tiny network through `loop.train`; --runslow trains for 300 steps."""
  steps = 300 if pytestconfig.getoption("--runslow") else 8
  trainer = magenta.MagentaTrainer(TINY, loss_net, learning_rate=3e-3)
  request = _request(tmp_path_factory.mktemp("magenta") / "run", steps)
  metrics = []
  state = loop.train(trainer, _FixedPairs(), request,
                     hooks=[lambda step, state, m: metrics.append(jax.device_get(m))])
  return trainer, state, request, metrics


def test_training_loss_falls(run):
  trainer, state, _, metrics = run
  assert set(metrics[0]) >= {"loss", "content_loss", "style_loss", "tv_loss"}
  losses = np.array([float(m["loss"]) for m in metrics])
  assert np.all(np.isfinite(losses))
  k = max(2, len(losses) // 10)
  assert losses[-k:].mean() < (0.5 if len(losses) > 100 else 0.9) * losses[:k].mean(), losses
  assert trainer.sample(state, _FixedPairs().batch(0, 2)).shape == (2, 32, 32, 3)


@pytest.fixture(scope="module")
def loaded(run, loss_net):
  _, _, request, _ = run
  return magenta.load(request.workdir, loss_net=loss_net)


def test_checkpoint_round_trip_and_stylize(run, loaded, monkeypatch, loss_net):
  trainer, state, request, _ = run
  model, params, config = loaded
  assert config == TINY
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.device_get(state.params))
  batch = _FixedPairs().batch(0, 1)
  expected = np.asarray(trainer.sample(state, batch))[0]
  out = magenta.stylize(model, params, batch["content"][0], [batch["style"][0]])
  np.testing.assert_allclose(out, expected, atol=1e-5)

  monkeypatch.setattr(vgg, "load_loss_net", lambda weights, **kw: loss_net)
  content = image.resize_long_side(image.sample_content(), 37)
  out = api.get_method("magenta").run_stylize(api.StylizeRequest(
      method="magenta", content=content, styles=[batch["style"][0]], checkpoint=request.workdir))
  assert out.shape == content.shape and out.min() >= 0 and out.max() <= 1
  for bad in (dict(checkpoint=None), dict(style_index=[0]), dict(overrides={"width": "2"}),
              dict(weights="torchvision-vgg19"), dict(styles=[]), dict(alpha=-0.1),
              dict(masks=[np.ones((3, 3))]), dict(style_weights=[0.5, 0.5])):
    with pytest.raises(ConfigError):
      magenta.run_stylize(api.StylizeRequest(**{
          "method": "magenta", "content": content, "styles": [batch["style"][0]],
          "checkpoint": request.workdir, **bad}))
  with pytest.raises(CheckpointError):
    magenta.load(str(request.workdir) + "_missing")


def _images():
  # The shapes of the round-trip test, so the stylize programs compile once for the module.
  content = image.resize_long_side(image.sample_content(), 37)
  style = image.resize(image.sample_style(), (32, 32))
  other = np.ascontiguousarray(np.asarray(style)[::-1, :, ::-1] * 0.5)
  return content, style, other


def test_alpha_zero_is_identity_interpolation(loaded):
  model, params, _ = loaded
  content, style, other = _images()
  zero = magenta.stylize(model, params, content, [style], alpha=0.0)
  # alpha = 0 uses the content's own embedding: the style image no longer matters.
  np.testing.assert_allclose(magenta.stylize(model, params, content, [other], alpha=0.0), zero,
                             atol=1e-5)
  np.testing.assert_allclose(magenta.stylize(model, params, content, [content]), zero, atol=1e-5)
  half = magenta.stylize(model, params, content, [style], alpha=0.5)
  e_c, e_s = (magenta.embed(model, params, x) for x in (content, style))
  h, w = content.shape[:2]
  padded = np.pad(content, ((0, (-h) % 4), (0, (-w) % 4), (0, 0)), mode="reflect")
  direct = model.net.apply({"params": params}, jnp.asarray(padded)[None], 0.5 * (e_c + e_s),
                           method="transform")
  np.testing.assert_allclose(half, np.clip(np.asarray(direct)[0, :h, :w], 0, 1), atol=1e-5)


def test_repeated_style_with_equal_weights_is_that_style(loaded):
  model, params, _ = loaded
  content, style, other = _images()
  alone = magenta.stylize(model, params, content, [style], alpha=0.8)
  twice = magenta.stylize(model, params, content, [style, style], style_weights=[1, 1], alpha=0.8)
  np.testing.assert_allclose(twice, alone, atol=1e-5)
  one_hot = magenta.stylize(model, params, content, [style, other], style_weights=[0.0, 1.0])
  np.testing.assert_allclose(one_hot, magenta.stylize(model, params, content, [other]), atol=1e-5)


def test_masks_confine_each_style_to_its_region(loaded):
  model, params, _ = loaded
  content, style, other = _images()
  m = np.zeros(content.shape[:2], np.float32)
  m[:, :17] = 1.0
  mixed = magenta.stylize(model, params, content, [style, other], masks=[m, 1 - m])
  a = magenta.stylize(model, params, content, [style])
  b = magenta.stylize(model, params, content, [other])
  np.testing.assert_allclose(mixed[:, :17], a[:, :17], atol=1e-5)
  np.testing.assert_allclose(mixed[:, 17:], b[:, 17:], atol=1e-5)
  assert np.abs(a - b).max() > 1e-3


def test_preserve_color(loaded):
  model, params, _ = loaded
  content, style, _ = _images()
  matched = magenta.stylize(model, params, content, [style], preserve_color="histogram")
  expected = magenta.stylize(model, params, content, [image.match_color(style, content)])
  np.testing.assert_allclose(matched, expected, atol=1e-5)
  lum = magenta.stylize(model, params, content, [style], preserve_color="luminance")
  plain = magenta.stylize(model, params, content, [style])
  np.testing.assert_allclose(lum, image.luminance_transfer(content, plain), atol=1e-5)


@pytest.mark.parametrize("preserve_color,embeds", [("none", 2 + 2), ("histogram", 2 * 3)])
def test_stylizer_embeds_the_styles_once(run, loaded, monkeypatch, loss_net, preserve_color,
                                         embeds):
  """Two frames at alpha < 1: each style is embedded once, each frame's identity embedding every
  time; 'histogram' recolours the styles to every frame, so it embeds them again."""
  model, params, _ = loaded
  content, style, other = _images()
  frames = [content, np.ascontiguousarray(content[::-1])]
  controls_ = dict(style_weights=[0.3, 0.7], alpha=0.6, preserve_color=preserve_color)
  want = [magenta.stylize(model, params, f, [style, other], **controls_) for f in frames]
  monkeypatch.setattr(vgg, "load_loss_net", lambda weights, **kw: loss_net)
  stylizer = magenta.make_stylizer(api.StylizeRequest(
      method="magenta", content=frames[0], styles=[style, other], checkpoint=run[2].workdir,
      **controls_))
  calls = []
  real = magenta_inference._embed
  monkeypatch.setattr(magenta_inference, "_embed", lambda *a: calls.append(1) or real(*a))
  for f, w in zip(frames, want):
    np.testing.assert_allclose(stylizer(f), w, atol=1e-5)
  assert len(calls) == embeds
  if preserve_color == "histogram":
    with pytest.raises(ConfigError, match="cannot be used with preserve_color='histogram'"):
      magenta.stylize(model, params, content, [style, other], style_codes=[0, 0], **controls_)


def test_export_onnx_of_a_trained_workdir(run, loaded, monkeypatch, loss_net):
  pytest.importorskip("onnxruntime")
  pytest.importorskip("onnx")
  monkeypatch.setattr(vgg, "load_loss_net", lambda weights, **kw: loss_net)
  content, style, _ = _images()
  request = api.StylizeRequest(method="magenta", content=content, styles=[style], alpha=0.7,
                               checkpoint=run[2].workdir)
  model = export.export_onnx(request)
  assert export.compare(model, magenta.make_stylizer(request), content, style) < 2e-4
  with pytest.raises(ConfigError, match="takes one style image at run time"):
    export.export_onnx(dataclasses.replace(request, styles=[style, style]))


# --------------------------------------------------------------------------------------------------
# make_trainer


def test_make_trainer_data_and_overrides(tmp_path, monkeypatch, loss_net, stripes_image):
  monkeypatch.setattr(vgg, "load_loss_net", lambda weights, **kw: loss_net)
  styles = tmp_path / "styles"
  styles.mkdir()
  image.save_image(str(styles / "a.png"), stripes_image)
  request = _request(tmp_path / "w", 1, overrides={"num_residual": "1", "tv_weight": "10",
                                                    "loss_pooling": "max"})
  request.style_dir = str(styles)
  trainer, dataset = magenta.make_trainer(request)
  assert trainer.config.tv_weight == 10.0 and trainer.loss_net.pooling == "max"
  b0, b1 = dataset.batch(5, 2), dataset.batch(5, 2)
  assert b0["content"].shape == b0["style"].shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(b0["style"], b1["style"])
  default, _ = magenta.make_trainer(_request(tmp_path / "w2", 1))
  assert default.loss_net.pooling == "avg"  # the reference's TF-slim VGG16 averages
  for overrides in ({"bogus": "1"}, {"content_layers": "relu9_9"}, {"loss_pooling": "median"}):
    with pytest.raises(ConfigError):
      magenta.make_trainer(_request(tmp_path / "w3", 1, overrides=overrides))


def test_config_round_trips_through_json():
  d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(TINY).items()}
  assert magenta_inference.config_from_dict(d) == TINY
  with pytest.raises(CheckpointError):
    magenta_inference.config_from_dict({**d, "bogus": 1})
