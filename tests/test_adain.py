"""AdaIN: decoder vs PyTorch, AdaIN targets vs NumPy, training through the loop, controls."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import api
from jaxstyle import image
from jaxstyle import vgg
from jaxstyle.errors import CheckpointError, ConfigError
from jaxstyle.methods import adain
from jaxstyle.methods import controls
from jaxstyle.methods.adain import inference as adain_inference
from jaxstyle.methods.adain import model as adain_model
from jaxstyle.train import loop

TINY = adain.AdaINConfig(width=1 / 16)  # decoder widths 4 / 8 / 16


def _loss_net():
  """A narrow, randomly initialised Caffe-convention VGG16 (no pretrained weights in tests)."""
  return vgg.random_loss_net(1, 16)


@pytest.fixture(scope="module")
def loss_net():
  return _loss_net()


def _np_adain(c, s, eps=1e-5, cmask=None):
  """NumPy AdaIN; `cmask` [B, H, W] restricts the content statistics to a region."""
  w = np.ones(c.shape[:3]) if cmask is None else np.broadcast_to(cmask, c.shape[:3])
  w = w[..., None]
  cm = (w * c).sum((1, 2), keepdims=True) / w.sum((1, 2), keepdims=True)
  cs = np.sqrt((w * (c - cm) ** 2).sum((1, 2), keepdims=True) / w.sum((1, 2), keepdims=True) + eps)
  sm = s.mean((1, 2), keepdims=True)
  ss = np.sqrt(s.var((1, 2), keepdims=True) + eps)
  return (c - cm) / cs * ss + sm


# --------------------------------------------------------------------------------------------------
# Model


@pytest.mark.parametrize("depth", [16, 19])
def test_decoder_mirrors_the_encoder(depth):
  decoder = adain_model.make_decoder(TINY, depth)
  t = jax.ShapeDtypeStruct((2, 4, 5, 512), jnp.float32)
  params = jax.eval_shape(decoder.init, jax.random.PRNGKey(0), t)["params"]  # shapes only
  assert jax.eval_shape(decoder.apply, {"params": params}, t).shape == (2, 32, 40, 3)
  # One decoder conv per encoder conv up to relu4_1, with in/out channels swapped.
  encoder = vgg.param_shapes(depth, widths=(4, 8, 16, 512, 512))
  mirrored = {k: v for k, v in encoder.items() if int(k[4]) <= 3 or k == "conv4_1"}
  assert set(params) == set(mirrored)
  for name, shapes in mirrored.items():
    kh, kw, cin, cout = shapes["kernel"]
    assert params[name]["conv"]["kernel"].shape == (kh, kw, cout, cin), name


def test_decoder_matches_pytorch():
  torch = pytest.importorskip("torch")
  decoder = adain_model.make_decoder(TINY, 19)
  rng = np.random.default_rng(0)
  t = rng.uniform(0, 2, (2, 4, 4, 512)).astype(np.float32)
  params = decoder.init(jax.random.PRNGKey(0), jnp.asarray(t))["params"]
  ours = np.asarray(decoder.apply({"params": params}, jnp.asarray(t)))

  # The reference decoder (naoto0804/pytorch-AdaIN `net.decoder`) at our widths.
  order = ["conv4_1", "up", "conv3_4", "conv3_3", "conv3_2", "conv3_1", "up", "conv2_2", "conv2_1",
           "up", "conv1_2", "conv1_1"]
  layers = []
  for name in order:
    if name == "up":
      layers.append(torch.nn.Upsample(scale_factor=2, mode="nearest"))
      continue
    k = np.asarray(params[name]["conv"]["kernel"])
    conv = torch.nn.Conv2d(k.shape[2], k.shape[3], 3)
    conv.weight.data = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
    conv.bias.data = torch.from_numpy(np.asarray(params[name]["conv"]["bias"]).copy())
    layers += [torch.nn.ReflectionPad2d(1), conv]
    if name != "conv1_1":
      layers.append(torch.nn.ReLU())
  with torch.no_grad():
    ref = torch.nn.Sequential(*layers)(torch.from_numpy(t.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(ours, ref.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


def test_blend_targets_match_numpy():
  rng = np.random.default_rng(1)
  c = rng.normal(1, 2, (1, 6, 8, 5)).astype(np.float32)
  s1 = rng.normal(0, 1, (1, 5, 5, 5)).astype(np.float32)
  s2 = rng.normal(3, 0.5, (1, 7, 4, 5)).astype(np.float32)
  out = adain_model.blend_targets(jnp.asarray(c), [s1, s2], [0.25, 0.75], alpha=0.6)
  ref = 0.6 * (0.25 * _np_adain(c, s1) + 0.75 * _np_adain(c, s2)) + 0.4 * c
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)

  m = np.zeros((1, 6, 8), np.float32)
  m[:, :, :3] = 1.0
  out = adain_model.blend_targets(jnp.asarray(c), [s1, s2], [0.5, 0.5], masks=[m, 1 - m])
  ref = (m[..., None] * _np_adain(c, s1, cmask=m)
         + (1 - m[..., None]) * _np_adain(c, s2, cmask=1 - m))
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_region_weights_sum_to_one():
  a = np.zeros((4, 4), np.float32)
  a[:, :2] = 1.0
  b = np.zeros((4, 4), np.float32)
  b[:, 1:3] = 1.0  # overlaps a in column 1; column 3 is covered by neither
  r = controls.region_weights([a, b], [0.25, 0.75])
  np.testing.assert_allclose(r.sum(0), 1.0)
  np.testing.assert_allclose(r[:, 0, 1], [0.5, 0.5])
  np.testing.assert_allclose(r[:, 0, 3], [0.25, 0.75])
  np.testing.assert_allclose(r[:, 0, 0], [1.0, 0.0])


# --------------------------------------------------------------------------------------------------
# Training through the shared loop


class _FixedPairs:
  """One content/style batch at every step, so the loss must fall."""

  def __init__(self, size=32):
    rng = np.random.default_rng(0)
    self.content = rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32)
    style = image.resize(image.sample_style(), (size, size))
    self.style = np.stack([style, style[::-1]])

  def batch(self, step, batch_size):
    del step
    return {"content": self.content[:batch_size], "style": self.style[:batch_size]}


def _request(workdir, steps, **kw):
  return api.TrainRequest(method="adain", content_dir=None, style_dir=None, workdir=str(workdir),
                          image_size=32, batch_size=2, steps=steps, checkpoint_every=1000,
                          log_every=1000, summary_every=1000, **kw)


@pytest.fixture(scope="module")
def run(tmp_path_factory, pytestconfig, loss_net):
  """Trains a tiny AdaIN decoder through `loop.train`; --runslow trains for 300 steps."""
  steps = 300 if pytestconfig.getoption("--runslow") else 8
  trainer = adain.AdaINTrainer(TINY, loss_net, learning_rate=1e-3)
  request = _request(tmp_path_factory.mktemp("adain") / "run", steps)
  losses = []
  state = loop.train(trainer, _FixedPairs(), request,
                     hooks=[lambda step, state, metrics: losses.append(jax.device_get(metrics))])
  return trainer, state, request, losses


def test_training_loss_falls(run):
  trainer, state, _, metrics = run
  assert set(metrics[0]) >= {"loss", "content_loss", "style_loss"}
  losses = np.array([float(m["loss"]) for m in metrics])
  assert np.all(np.isfinite(losses))
  k = max(2, len(losses) // 10)
  assert losses[-k:].mean() < (0.5 if len(losses) > 100 else 0.9) * losses[:k].mean(), losses
  scales = state.extra["layer_scale"]
  assert set(scales) == {"relu1_1", "relu2_1", "relu3_1", "relu4_1"}
  assert all(float(v) > 0 for v in scales.values())
  assert trainer.sample(state, _FixedPairs().batch(0, 2)).shape == (2, 32, 32, 3)


@pytest.fixture(scope="module")
def loaded(run, loss_net):
  _, _, request, _ = run
  return adain.load(request.workdir, loss_net=loss_net)


def test_checkpoint_round_trip_and_stylize(run, loaded, monkeypatch, loss_net):
  trainer, state, request, _ = run
  model, params, config = loaded
  assert config == TINY
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.device_get(state.params))
  batch = _FixedPairs().batch(0, 1)
  expected = np.asarray(trainer.sample(state, batch))[0]
  out = adain.stylize(model, params, batch["content"][0], [batch["style"][0]])
  np.testing.assert_allclose(out, expected, atol=1e-5)

  # Through the launcher entry point (weights re-loaded by name), with an odd content size.
  monkeypatch.setattr(vgg, "load_loss_net", lambda weights, **kw: loss_net)
  content = _images()[0][:61, :157]  # odd size: padded to the 64 x 160 of the tests below
  out = api.get_method("adain").run_stylize(api.StylizeRequest(
      method="adain", content=content, styles=[batch["style"][0]], checkpoint=request.workdir))
  assert out.shape == content.shape and out.min() >= 0 and out.max() <= 1
  for bad in (dict(checkpoint=None), dict(style_index=[0]), dict(overrides={"width": "2"}),
              dict(weights="torchvision-vgg19"), dict(styles=[]), dict(alpha=1.5),
              dict(masks=[np.ones((3, 3))]), dict(preserve_color="sepia")):
    with pytest.raises(ConfigError):
      adain.run_stylize(api.StylizeRequest(**{
          "method": "adain", "content": content, "styles": [batch["style"][0]],
          "checkpoint": request.workdir, **bad}))
  with pytest.raises(CheckpointError):
    adain.load(str(request.workdir) + "_missing")


def _images():
  # One content/style shape for the whole module, so the stylize programs compile once.
  content = image.resize(image.sample_content(), (64, 160))
  style = image.resize(image.sample_style(), (32, 32))
  other = np.ascontiguousarray(np.asarray(style)[::-1, :, ::-1] * 0.5)
  return content, style, other


def test_alpha_zero_is_the_reconstruction(loaded):
  model, params, _ = loaded
  content, style, _ = _images()
  out = adain.stylize(model, params, content, [style], alpha=0.0)
  f_c = adain_model.encode(model.encoder, jnp.asarray(content)[None])[adain_model.ENCODER_LAYER]
  direct = np.clip(np.asarray(model.decoder.apply({"params": params}, f_c))[0], 0, 1)
  np.testing.assert_allclose(out, direct, atol=1e-5)
  assert not np.allclose(adain.stylize(model, params, content, [style], alpha=1.0), out, atol=1e-3)


def test_repeated_style_with_equal_weights_is_that_style(loaded):
  model, params, _ = loaded
  content, style, other = _images()
  alone = adain.stylize(model, params, content, [style], alpha=0.7)
  twice = adain.stylize(model, params, content, [style, style], style_weights=[0.5, 0.5], alpha=0.7)
  np.testing.assert_allclose(twice, alone, atol=1e-5)
  one_hot = adain.stylize(model, params, content, [style, other], style_weights=[1.0, 0.0])
  np.testing.assert_allclose(one_hot, adain.stylize(model, params, content, [style]), atol=1e-5)


def test_masks_confine_each_style_to_its_region(loaded):
  model, params, _ = loaded
  content, style, other = _images()
  m = np.zeros(content.shape[:2], np.float32)
  m[:, :64] = 1.0  # style on the left 64 columns, other on the right
  mixed = adain.stylize(model, params, content, [style, other], masks=[m, 1 - m])
  only_other = adain.stylize(model, params, content, [other, other], masks=[m, 1 - m])
  only_style = adain.stylize(model, params, content, [style, style], masks=[m, 1 - m])
  # The decoder's receptive field reaches ~30 px across the border (relu4_1 cells are 8 px).
  np.testing.assert_allclose(mixed[:, 104:], only_other[:, 104:], atol=1e-5)
  np.testing.assert_allclose(mixed[:, :24], only_style[:, :24], atol=1e-5)
  assert np.abs(mixed[:, :24] - only_other[:, :24]).max() > 1e-3


def test_preserve_color(loaded):
  model, params, _ = loaded
  content, style, _ = _images()
  matched = adain.stylize(model, params, content, [style], preserve_color="histogram")
  expected = adain.stylize(model, params, content, [image.match_color(style, content)])
  np.testing.assert_allclose(matched, expected, atol=1e-5)
  lum = adain.stylize(model, params, content, [style], preserve_color="luminance")
  plain = adain.stylize(model, params, content, [style])
  np.testing.assert_allclose(lum, image.luminance_transfer(content, plain), atol=1e-5)


@pytest.mark.parametrize("preserve_color,encodes", [("luminance", 2 + 2), ("histogram", 2 * 3)])
def test_stylizer_encodes_the_styles_once(run, loaded, monkeypatch, loss_net, preserve_color,
                                          encodes):
  """Two frames, two masked styles: each style is encoded once, not per frame (each content is),
  except under 'histogram', which recolours the styles to every frame."""
  model, params, _ = loaded
  content, style, other = _images()
  frames = [content, np.ascontiguousarray(content[::-1])]
  m = np.zeros(content.shape[:2], np.float32)
  m[:, :64] = 1.0
  controls_ = dict(style_weights=[0.3, 0.7], alpha=0.8, masks=[m, 1 - m],
                   preserve_color=preserve_color)
  want = [adain.stylize(model, params, f, [style, other], **controls_) for f in frames]
  monkeypatch.setattr(vgg, "load_loss_net", lambda weights, **kw: loss_net)
  stylizer = adain.make_stylizer(api.StylizeRequest(
      method="adain", content=frames[0], styles=[style, other], checkpoint=run[2].workdir,
      **controls_))
  calls = []
  real = adain_inference._encode
  monkeypatch.setattr(adain_inference, "_encode", lambda *a: calls.append(1) or real(*a))
  for f, w in zip(frames, want):
    np.testing.assert_allclose(stylizer(f), w, atol=1e-5)
  assert len(calls) == encodes
  with pytest.raises(ConfigError, match="1 style codes for 2 styles"):
    adain.stylize(model, params, content, [style, other], style_codes=[None])


# --------------------------------------------------------------------------------------------------
# make_trainer


def test_make_trainer_data_and_overrides(tmp_path, monkeypatch, loss_net, stripes_image,
                                         smooth_image):
  monkeypatch.setattr(vgg, "load_loss_net", lambda weights, **kw: loss_net)
  styles, contents = tmp_path / "styles", tmp_path / "contents"
  styles.mkdir()
  contents.mkdir()
  image.save_image(str(styles / "a.png"), stripes_image)
  image.save_image(str(contents / "c.png"), smooth_image)
  request = _request(tmp_path / "w", 1, overrides={"width": "0.125", "style_weight": "3",
                                                    "load_size": "40"})
  request.style_dir, request.content_dir = str(styles), str(contents)
  trainer, dataset = adain.make_trainer(request)
  assert trainer.config.style_weight == 3.0 and trainer.config.channels() == (8, 16, 32)
  b0, b1 = dataset.batch(3, 2), dataset.batch(3, 2)
  assert b0["content"].shape == b0["style"].shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(b0["style"], b1["style"])
  # Without folders: bundled samples on both sides.
  _, fallback = adain.make_trainer(_request(tmp_path / "w2", 1))
  assert fallback.batch(0, 2)["style"].shape == (2, 32, 32, 3)
  for overrides in ({"no_such_key": "1"}, {"style_layers": "relu9_9"},
                    {"style_layer_weights": "1,2"}, {"encoder_padding": "circular"}):
    with pytest.raises(ConfigError):
      adain.make_trainer(_request(tmp_path / "w3", 1, overrides=overrides))


def test_config_round_trips_through_json():
  d = dataclasses.asdict(TINY)
  d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
  assert adain_inference.config_from_dict(d) == TINY
  with pytest.raises(CheckpointError):
    adain_inference.config_from_dict({**d, "bogus": 1})
