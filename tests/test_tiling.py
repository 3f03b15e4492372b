"""Tiled stylization (jaxstyle/tiling.py): windows, fixed normalisation statistics, and tiled ==
untiled for Johnson, MSG-Net and Magenta once the statistics are the whole image's."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxstyle import image
from jaxstyle import nn as jsnn
from jaxstyle import tiling
from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.methods import johnson
from jaxstyle.methods import magenta
from jaxstyle.methods import msgnet
from jaxstyle.methods.magenta import model as magenta_model
from jaxstyle.methods.magenta import trainer as magenta_trainer
from jaxstyle.nn import norms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 102 x 139 pads to 104 x 140: with 96 px windows and 32 px margins, two rows and three columns,
# the last ones shifted inwards, and 6 windows in batches of 4 (one short batch).
SHAPE = (102, 139, 3)
EXACT = dict(tile=96, tile_margin=32, tile_thumbnail=4096)


def _perturbed(tree, seed, scale=0.2):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def content():
  return image.resize(image.sample_content(), SHAPE[:2])


def test_windows_partition_the_axis():
  for size, (tile, margin) in ((s, t) for s in range(4, 400, 4)
                               for t in ((40, 8), (64, 16), (96, 32), (32, 4))):
    spans = tiling.windows(size, tile, margin, 4)
    assert spans[0][1] == 0 and spans[-1][2] == size
    for (start, core, end), after in zip(spans, spans[1:] + [None]):
      assert 0 <= start <= core < end <= start + tile and start % 4 == 0
      assert start + min(tile, size) <= size  # every window has the full size
      assert core == 0 or core - start >= margin
      assert end == size or start + tile - end >= margin
      assert after is None or after[1] == end


def test_instance_norm_records_and_reuses_statistics(rng):
  layer = jsnn.InstanceNorm()
  x = jnp.asarray(rng.normal(2.0, 3.0, (1, 9, 7, 4)).astype(np.float32))
  variables = layer.init(jax.random.PRNGKey(0), x)
  assert norms.STATS not in variables  # init records nothing
  y, state = layer.apply(variables, x, mutable=[norms.STATS])
  np.testing.assert_allclose(state[norms.STATS]["mean"], x.mean((1, 2), keepdims=True),
                             rtol=1e-5)
  np.testing.assert_allclose(y, layer.apply(variables, x), atol=1e-6)
  part = x[:, :4]  # a crop normalised with the whole map's statistics, not its own
  fixed = layer.apply({**variables, **state}, part)
  np.testing.assert_allclose(fixed, y[:, :4], atol=1e-5)
  assert np.abs(fixed - layer.apply(variables, part)).max() > 0.1


def test_johnson_tiled_equals_untiled(content):
  config = johnson.JohnsonConfig(width=0.25, num_residual=1)
  net = johnson.TransformerNet(config)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  full = johnson.stylize(net, params, content)
  np.testing.assert_allclose(johnson.stylize(net, params, content, **EXACT), full, atol=1e-5)
  # Too little context: the windows' own borders show.
  narrow = johnson.stylize(net, params, content, tile=96, tile_margin=8, tile_thumbnail=4096)
  assert np.abs(narrow - full).max() > 1e-3
  # Statistics from a thumbnail (the point of tiling) stay close to the whole image's; tiles
  # normalised on their own (no fixed statistics) drift much further.
  # (Measured: 0.037 against 0.119 mean error.)
  thumb = johnson.stylize(net, params, content, tile=64, tile_margin=16, tile_thumbnail=96)
  naive = tiling.stylize(lambda x, _: np.asarray(johnson.inference._apply(net, params, x)),
                         lambda x: None, np.pad(content, ((0, 2), (0, 1), (0, 0)), "reflect"),
                         tile=64, margin=16)[:102, :139].clip(0, 1)
  assert np.abs(thumb - full).mean() < 0.5 * np.abs(naive - full).mean()


def test_msgnet_tiled_equals_untiled(content, rng):
  config = msgnet.MSGNetConfig(ngf=8, stem_features=16, n_blocks=1)
  net = msgnet.MSGNet(config)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 32, 32)))
  params = _perturbed(params["params"], 1)
  out_conv = params["decoder"]["out_conv"]["conv"]
  out_conv["kernel"] = out_conv["kernel"] * 30.0  # results that span [0, 1]
  style = rng.random((40, 44, 3)).astype(np.float32)
  full = msgnet.stylize(net, params, content, [style])
  assert full.std() > 0.05
  np.testing.assert_allclose(msgnet.stylize(net, params, content, [style], **EXACT), full,
                             atol=1e-5)


def test_magenta_tiled_equals_untiled(content, rng):
  config = magenta.MagentaConfig(width=1 / 8, num_residual=1, bottleneck=8)
  loss_net = magenta_trainer.loss_net_for(vgg.random_loss_net(2, 16), config)
  net = magenta_model.ArbitraryStyleNet(config)
  pooled = sum(loss_net.channels(k) for k in config.predictor_layers)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, pooled)))
  params = _perturbed(params["params"], 2)
  model = magenta.MagentaModel(net, loss_net)
  style = rng.random((32, 32, 3)).astype(np.float32)
  full = magenta.stylize(model, params, content, [style], alpha=0.7)
  assert full.std() > 0.05
  # 1e-4: the random gamma/beta heads amplify float32 summation-order differences (~2e-5).
  np.testing.assert_allclose(magenta.stylize(model, params, content, [style], alpha=0.7, **EXACT),
                             full, atol=1e-4)


def test_settings_are_checked():
  for bad in (dict(tile=-1), dict(tile=64, margin=32), dict(tile=64, thumbnail=-2)):
    with pytest.raises(ConfigError):
      tiling.check(bad["tile"], bad.get("margin", 8), bad.get("thumbnail", 0))
  with pytest.raises(ConfigError, match="multiples of 4"):
    tiling.windows(200, 66, 16, 4)


def test_launcher(tmp_path):
  torch = pytest.importorskip("torch")
  from _released_nets import ExamplesTransformerNet  # noqa: E402  (needs torch)
  torch.manual_seed(0)
  torch.save(ExamplesTransformerNet(c1=8, num_residual=1).state_dict(), str(tmp_path / "m.pth"))
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), np.uint8)).save(
      str(tmp_path / "c.png"))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAXSTYLE_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)

  def launch(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "stylize.py"), *args],
                          cwd=str(tmp_path), env=env, text=True, capture_output=True, timeout=600)

  ok = launch("--method=johnson", "--checkpoint=m.pth", "--content=c.png", "--size=120",
              "--tile=64", "--tile_margin=16", "--output=out.png")
  assert ok.returncode == 0, ok.stderr
  assert Image.open(str(tmp_path / "out.png")).size == (90, 120)
  for args, message in (
      (["--method=gatys", "--tile=64"], "--tile applies to johnson, msgnet, magenta, not gatys"),
      (["--method=johnson", "--checkpoint=m.pth", "--tile=64", "--tile_margin=32"],
       "must be larger than twice --tile_margin"),
      (["--method=johnson", "--checkpoint=m.pth", "--tile=66", "--tile_margin=16"],
       "must be multiples of 4")):
    bad = launch(*args, "--content=c.png", "--output=bad.png")
    assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.png").exists()
