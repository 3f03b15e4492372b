"""StyleBank: network vs PyTorch, (T+1) schedule, incremental learning, fusion controls."""
import dataclasses
import functools
import importlib.util

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import api
from jaxstyle import export
from jaxstyle import image
from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.methods import stylebank
from jaxstyle.methods.stylebank import inference
from jaxstyle.methods.stylebank import pipeline
from jaxstyle.methods.stylebank import trainer as stylebank_trainer
from jaxstyle.methods.stylebank.model import bank_name
from jaxstyle.train import loop

torch = pytest.importorskip("torch")

VGG_WIDTHS = (8, 16, 16, 32, 32)
TINY = stylebank.StyleBankConfig(width=0.125, style_size=32)


@pytest.fixture(scope="module")
def loss_net():
  """A randomly initialised narrow Caffe-convention VGG16 (no pretrained weights in tests)."""
  return vgg.LossNet(params=vgg.init_params(2, 16, widths=VGG_WIDTHS), depth=16, convention="caffe",
                     widths=VGG_WIDTHS)


def _content(n, size=32, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def _styles(k):
  base = image.resize_long_side(image.sample_style(), 32)
  return [np.roll(base, 7 * i, axis=1)[..., np.roll(np.arange(3), i)] for i in range(k)]


def _params(config, num_styles, seed=0):
  net = stylebank.StyleBankNet(config)
  init = jax.jit(net.init, static_argnums=2)
  params = init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)), num_styles)
  # Non-trivial instance-norm affine parameters so that they are checked too.
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(len(str(path))), a.shape)
      if "norm" in str(path) else a, params)
  return net, params


# --------------------------------------------------------------------------------------------------
# Network vs a PyTorch transcription of the same architecture


def _tconv(p, x, stride=1):
  k = p["conv"]["kernel"]
  w = torch.from_numpy(np.asarray(k).transpose(3, 2, 0, 1).copy())
  x = torch.nn.functional.pad(x, (k.shape[0] // 2,) * 4, mode="reflect")
  return torch.nn.functional.conv2d(x, w, torch.from_numpy(np.asarray(p["conv"]["bias"])), stride)


def _tnorm(p, x):
  return torch.nn.functional.instance_norm(x, weight=torch.from_numpy(np.array(p["scale"])),
                                           bias=torch.from_numpy(np.array(p["bias"])), eps=1e-5)


def _torch_encode(params, x):
  e = params["encoder"]
  for i, s in enumerate((1, 2, 2), start=1):
    x = torch.relu(_tnorm(e[f"norm{i}"], _tconv(e[f"conv{i}"], x, s)))
  return x


def _torch_decode(params, f):
  d = params["decoder"]
  for i in (1, 2):
    f = torch.nn.functional.interpolate(f, scale_factor=2, mode="nearest")
    f = torch.relu(_tnorm(d[f"norm{i}"], _tconv(d[f"up{i}"]["conv_layer"], f)))
  return _tconv(d["out"], f)


def _to_torch(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def _from_torch(t):
  return t.numpy().transpose(0, 2, 3, 1)


def test_network_matches_pytorch_and_fusion_is_linear():
  net, params = _params(TINY, 3)
  x = _content(2, seed=1)
  with torch.no_grad():
    f = _torch_encode(params, _to_torch(x * 255.0))
    banked = [_tconv(params["banks"][bank_name(i)]["conv1"], f) for i in range(3)]
    ref_ae = _from_torch(_torch_decode(params, f)) / 255.0 + 0.5  # + the mid-grey output offset
    ref_styled = np.stack([_from_torch(_torch_decode(params, banked[i][b:b + 1]))[0] / 255.0 + 0.5
                           for b, i in enumerate((2, 0))])
    blend = 0.3 * banked[0] + 0.7 * banked[1]
    ref_blend = _from_torch(_torch_decode(params, blend)) / 255.0 + 0.5
  tol = dict(rtol=1e-4, atol=2e-5)
  assert params["banks"][bank_name(0)]["conv1"]["conv"]["kernel"].shape == (3, 3, 16, 16)

  @jax.jit
  def run(params, x):
    f = net.encode(params, x)
    # Linear fusion (paper Sec. 4) of banks 0 and 1 decodes 0.3 K0(F) + 0.7 K1(F).
    fused = net.decode(params, net.fuse_banks(params["banks"], f, jnp.array([[0.3, 0.7, 0.0]] * 2)))
    ids = jnp.array([2, 0])
    return (net(params, x), net(params, x, ids), fused,
            net.fuse_banks(params["banks"], f, jax.nn.one_hot(ids, 3)),
            net.apply_bank(params["banks"], f, ids))

  ae, styled, fused, onehot, chosen = run(params, jnp.asarray(x))
  np.testing.assert_allclose(ae, ref_ae, **tol)
  assert styled.shape == (2, 32, 32, 3)
  np.testing.assert_allclose(styled, ref_styled, **tol)
  np.testing.assert_allclose(fused, ref_blend, **tol)
  # One-hot fusion equals the per-sample bank path used in training.
  np.testing.assert_allclose(onehot, chosen, rtol=1e-5, atol=1e-4)


def test_deeper_banks_and_transposed_decoder_shapes():
  config = dataclasses.replace(TINY, bank_layers=2, upsample="transpose")
  net = stylebank.StyleBankNet(config)
  params = jax.eval_shape(lambda r, x: net.init(r, x, 2), jax.random.PRNGKey(0),
                          jnp.zeros((1, 32, 32, 3)))
  assert set(params["banks"][bank_name(1)]) == {"conv1", "conv2", "norm1"}
  out = jax.eval_shape(net, params, jnp.zeros((2, 32, 32, 3)), jnp.array([0, 1]))
  assert out.shape == (2, 32, 32, 3)
  # The per-sample bank path (batched matmuls) equals the bank module run on each sample alone.
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), 2)
  params["banks"] = jax.tree_util.tree_map(  # non-trivial norm affines between the bank layers
      lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(1), a.shape), params["banks"])
  f = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 16))
  ids = jnp.array([1, 0, 1])
  want = jnp.concatenate([net.bank.apply({"params": params["banks"][bank_name(int(i))]}, f[b:b + 1])
                          for b, i in enumerate(ids)])
  np.testing.assert_allclose(net.apply_bank(params["banks"], f, ids), want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Training


def _trainer(loss_net, num_styles=2, config=TINY, lr=1e-2, **kw):
  return stylebank.StyleBankTrainer(config, loss_net, _styles(num_styles), learning_rate=lr, **kw)


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                   jax.tree_util.tree_leaves(b)))


def test_t_plus_one_schedule(loss_net):
  """Steps 0, 1 stylize (E, used bank, D change); step 2 is the auto-encoder step (banks fixed)."""
  trainer = _trainer(loss_net)
  batch = {"content": jnp.asarray(_content(2)), "style_id": jnp.array([1, 1], jnp.int32)}
  state = jax.jit(trainer.init)(jax.random.PRNGKey(0), batch)
  assert state.frozen["style_grams"]["relu1_2"].shape == (2, 8, 8)
  step = jax.jit(trainer.train_step)
  flags, losses = [], []
  for i in range(6):
    before = jax.device_get(state.params)
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    state = state.replace(step=state.step + 1)  # the loop's job
    after = jax.device_get(state.params)
    ae = bool(metrics["ae_step"])
    flags.append(ae)
    assert ae == (i % 3 == 2)
    assert not _same(before["encoder"], after["encoder"])
    assert not _same(before["decoder"], after["decoder"])
    assert _same(before["banks"][bank_name(1)], after["banks"][bank_name(1)]) == ae
    if ae:
      assert float(metrics["identity"]) > 0 and float(metrics["style"]) == 0
    else:
      losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  assert jax.jit(trainer.sample)(state, batch).shape == (2, 32, 32, 3)


def test_merged_step_matches_cond_step(loss_net):
  """The CPU step (select, no control flow) and the lax.cond step make the same updates."""
  trainer = _trainer(loss_net)
  batch = {"content": jnp.asarray(_content(2)), "style_id": jnp.array([1, 0], jnp.int32)}
  start = jax.jit(trainer.init)(jax.random.PRNGKey(0), batch)
  states = {}
  for step_fn in (stylebank_trainer.merged_train_step, stylebank_trainer.cond_train_step):
    step = jax.jit(functools.partial(step_fn, net=trainer.net))
    state, history = start, []
    for _ in range(6):  # two T+1 periods
      state, metrics = step(state, batch, jax.random.PRNGKey(0))
      state = state.replace(step=state.step + 1)
      history.append({k: float(v) for k, v in metrics.items()})
    states[step_fn.__name__] = (jax.device_get(state), history)
  (merged, m_hist), (cond, c_hist) = states["merged_train_step"], states["cond_train_step"]
  for a, b in zip(m_hist, c_hist):
    assert a.keys() == b.keys()
    for k in a:
      assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (k, a, b)
  # Conv biases before an instance norm have a zero true gradient, so Adam moves them by lr x the
  # sign of rounding noise, which differs between the two programs: compare the other leaves.
  determined = lambda tree: {jax.tree_util.keystr(k): v for k, v in
                             jax.tree_util.tree_leaves_with_path(tree) if "bias" not in str(k[-1])}
  m, c = determined(merged.params), determined(cond.params)
  assert m.keys() == c.keys() and len(m) > 10
  chex.assert_trees_all_close(m, c, rtol=1e-4, atol=1e-5)


def _request(workdir, steps, **kw):
  return api.TrainRequest(method="stylebank", content_dir=None, style_dir=None,
                          workdir=str(workdir), image_size=32, batch_size=2, steps=steps,
                          checkpoint_every=100, log_every=100, summary_every=100, **kw)


def test_dataset_is_deterministic_with_style_ids():
  ds = pipeline.StyleBankDataset(None, 32, seed=3, num_styles=4, first_style=2)
  a, b = ds.batch(5, 8), ds.batch(5, 8)
  np.testing.assert_array_equal(a["content"], b["content"])
  np.testing.assert_array_equal(a["style_id"], b["style_id"])
  ids = np.concatenate([ds.batch(s, 8)["style_id"] for s in range(10)])
  assert ids.dtype == np.int32 and set(ids) == {2, 3, 4, 5}


def test_incremental_learning_freezes_everything_but_new_banks(tmp_path, monkeypatch, loss_net,
                                                               stripes_image, smooth_image):
  """Train a base model, add two styles with base_checkpoint: only the new banks change."""
  monkeypatch.setattr(vgg, "load_loss_net", lambda weights, **kw: loss_net)
  overrides = {"width": "0.125", "style_size": "32", "learning_rate": "0.01"}
  base_dir = tmp_path / "base"
  trainer, dataset = stylebank.make_trainer(_request(base_dir, 2, overrides=overrides))
  assert trainer.num_styles == 2  # the two sample styles
  loop.train(trainer, dataset, _request(base_dir, 2, overrides=overrides))
  _, base_params, _ = stylebank.load(str(base_dir))

  styles = tmp_path / "new"
  styles.mkdir()
  image.save_image(str(styles / "a.png"), stripes_image)
  image.save_image(str(styles / "b.png"), smooth_image)
  inc_dir = tmp_path / "inc"
  request = _request(inc_dir, 2, overrides={"base_checkpoint": str(base_dir),
                                            "new_styles": str(styles), "learning_rate": "0.01",
                                            "width": "0.5"})  # the base's width wins
  trainer, dataset = stylebank.make_trainer(request)
  assert trainer.bank_offset == 2 and trainer.num_styles == 4 and trainer.config.width == 0.125
  assert set(dataset.batch(0, 8)["style_id"]) <= {2, 3}
  initial = {}
  loop.train(trainer, dataset, request,
             hooks=[lambda step, state, m: initial.setdefault(
                 "p", jax.device_get(state.params["new_banks"])) if step == 1 else None])
  _, params, _ = stylebank.load(str(inc_dir))
  assert sorted(params["banks"]) == [bank_name(i) for i in range(4)]
  for part in ("encoder", "decoder"):
    assert _same(params[part], base_params[part]), part
  for i in range(2):
    assert _same(params["banks"][bank_name(i)], base_params["banks"][bank_name(i)])
  new = {k: params["banks"][k] for k in (bank_name(2), bank_name(3))}
  assert not _same(new, initial["p"])  # step 2 trained them further

  content = image.resize_long_side(image.sample_content(), 36)
  out = stylebank.run_stylize(api.StylizeRequest(method="stylebank", content=content,
                                                 checkpoint=str(inc_dir), style_index=[3]))
  assert out.shape == content.shape[:2] + (3,)
  if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
    # The ONNX export holds the incremental banks too; its default fusion is the request's.
    request = api.StylizeRequest(method="stylebank", content=content, checkpoint=str(inc_dir),
                                 style_index=[3, 0], style_weights=[0.6, 0.4], alpha=0.9)
    model = export.export_onnx(request)
    assert export.compare(model, stylebank.make_stylizer(request), content) < 2e-4
  with pytest.raises(ConfigError):
    stylebank.make_trainer(_request(tmp_path / "x", 1, overrides={"new_styles": str(styles)}))
  with pytest.raises(ConfigError):
    stylebank.make_trainer(_request(base_dir, 1, overrides={"base_checkpoint": str(base_dir)}))


# --------------------------------------------------------------------------------------------------
# Stylize controls


def test_fusion_controls():
  net, params = _params(TINY, 3, seed=4)
  content = image.resize_long_side(image.sample_content(), 64)[:, :64]
  single = [inference.stylize(net, params, content, style_index=[i]) for i in range(3)]
  # Weights [1, 0] are bank 0 alone; alpha = 0 is the auto-encoder reconstruction.
  np.testing.assert_allclose(
      inference.stylize(net, params, content, style_index=[0, 1], style_weights=[1.0, 0.0]),
      single[0], atol=1e-5)
  ae = np.clip(np.asarray(jax.jit(net.__call__)(params, jnp.asarray(content)[None]))[0], 0, 1)
  np.testing.assert_allclose(inference.stylize(net, params, content, alpha=0.0), ae, atol=1e-5)
  # Equal default weights blend banks: the result is neither style alone.
  both = inference.stylize(net, params, content, style_index=[0, 1])
  assert min(np.abs(both - single[0]).mean(), np.abs(both - single[1]).mean()) > 1e-4

  # Region fusion: left half style 1, right half style 2; each side is nearer to its own style.
  h, w = content.shape[:2]
  left = np.zeros((h, w), np.float32)
  left[:, : w // 2] = 1
  out = inference.stylize(net, params, content, style_index=[1, 2], masks=[left, 1 - left])
  lhs, rhs = slice(0, w // 2 - 8), slice(w // 2 + 8, w)
  err = lambda a, b, s: np.abs(a[:, s] - b[:, s]).mean()
  assert err(out, single[1], lhs) < 0.5 * err(out, single[2], lhs)
  assert err(out, single[2], rhs) < 0.5 * err(out, single[1], rhs)

  for bad in (dict(style_index=[3]), dict(style_index=[0, 1], style_weights=[1.0]),
              dict(style_index=[0], masks=[left], style_weights=[1.0]),
              dict(preserve_color="histogram")):
    with pytest.raises(ConfigError):
      inference.stylize(net, params, content, **bad)


def test_training_loss_falls_clearly(tmp_path, loss_net, long_run):
  """A short run by default, a few hundred steps under --runslow: the stylizing loss falls."""
  steps = 300 if long_run else 50
  trainer = _trainer(loss_net, lr=5e-3)
  dataset = pipeline.StyleBankDataset(None, 32, seed=0, num_styles=2)
  losses = []

  def hook(step, state, metrics):
    if not float(metrics["ae_step"]):
      losses.append(float(metrics["loss"]))
  loop.train(trainer, dataset, _request(tmp_path / "run", steps), hooks=[hook])
  first, last = np.mean(losses[:3]), np.mean(losses[-3:])
  assert last < (0.3 if long_run else 0.7) * first, (first, last)
