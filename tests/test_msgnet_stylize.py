"""MSG-Net through the real training loop: checkpoint round trip, stylization and its controls
(brush size, style blending, the `run_stylize` request path).

A narrow network trained for 4 steps on 16 px images with a random VGG16 loss network.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import api
from jaxstyle import vgg
from jaxstyle.errors import ConfigError
from jaxstyle.methods import msgnet

from _msgnet_common import TINY, write_styles


# --------------------------------------------------------------------------------------------------
# The real loop, checkpoint round trip, run-time controls


TINY_OVERRIDES = {"ngf": "4", "stem_features": "8", "n_blocks": "1", "style_sizes": "16,24",
                  "style_layers": "relu1_2,relu2_2", "content_layers": "relu2_2"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Trains TINY through `launch/train.py`'s path (make_trainer + loop.train) for 4 steps."""
  from jaxstyle.train import loop  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("msgnet")
  styles = write_styles(str(root / "styles"))
  request = api.TrainRequest(
      method="msgnet", content_dir=None, style_dir=styles, workdir=str(root / "work"),
      image_size=16, batch_size=2, steps=4, checkpoint_every=2, log_every=2, summary_every=4,
      overrides=dict(TINY_OVERRIDES))
  with pytest.MonkeyPatch.context() as mp:
    # A narrow random VGG stands in for the pretrained HED weights.
    mp.setattr(vgg, "load_loss_net", lambda *a, **k: vgg.random_loss_net(0))
    trainer, dataset = api.get_method("msgnet").make_trainer(request)
  traces = [0]
  step_fn = trainer.train_step

  def counted(state, batch, rng):
    traces[0] += 1
    return step_fn(state, batch, rng)

  trainer.train_step = counted
  state = loop.train(trainer, dataset, request)
  sizes = {dataset.choice(i)[1] for i in range(request.steps)}
  return dict(workdir=request.workdir, state=state, traces=traces[0], sizes=sizes,
              styles=[os.path.join(styles, f) for f in sorted(os.listdir(styles))])


def test_loop_round_trip(trained):
  assert trained["traces"] == len(trained["sizes"]) == 2  # one compile per style-size bucket
  model, params, config = msgnet.load(trained["workdir"])
  assert config == TINY
  assert int(trained["state"].step) == 4
  for a, b in zip(jax.tree_util.tree_leaves(params),
                  jax.tree_util.tree_leaves(jax.device_get(trained["state"].params))):
    np.testing.assert_array_equal(a, b)
  assert os.path.isdir(os.path.join(trained["workdir"], "checkpoints", "4"))


def _loaded(trained):
  model, params, _ = msgnet.load(trained["workdir"])
  from jaxstyle import image  # pylint: disable=g-import-not-at-top
  styles = [image.load_image(p) for p in trained["styles"]]
  return model, params, styles


def _content(h=20, w=20):
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  return np.stack([x / w, y / h, 0.5 + 0.3 * np.sin(x / 3)], -1).astype(np.float32)


def test_stylize_output_and_brush_size(trained):
  model, params, styles = _loaded(trained)
  content = _content()
  out_small = msgnet.stylize(model, params, content, styles[:1], style_size=16)
  out_large = msgnet.stylize(model, params, content, styles[:1], style_size=24)
  assert out_small.shape == content.shape and out_small.min() >= 0 and out_small.max() <= 1
  # The style is encoded at another size: a different G, hence a different image.
  assert np.abs(out_small - out_large).mean() > 1e-4
  g16 = msgnet.style_gram(model, params, styles[:1], style_size=16)
  g24 = msgnet.style_gram(model, params, styles[:1], style_size=24)
  assert float(jnp.abs(g16 - g24).max()) > 1e-6
  from jaxstyle import image  # pylint: disable=g-import-not-at-top
  pre = image.resize_long_side(styles[0], 16)
  np.testing.assert_allclose(msgnet.stylize(model, params, content, [pre]), out_small, atol=1e-6)


def test_style_weights_blend_grams(trained):
  model, params, styles = _loaded(trained)
  g = [msgnet.style_gram(model, params, [s], style_size=16) for s in styles[:2]]
  blend = msgnet.style_gram(model, params, styles[:2], style_weights=[3, 7], style_size=16)
  np.testing.assert_allclose(np.asarray(blend), np.asarray(0.3 * g[0] + 0.7 * g[1]), rtol=1e-5,
                             atol=1e-9)
  content = _content()
  only_first = msgnet.stylize(model, params, content, styles[:2], style_weights=[1, 0],
                              style_size=16)
  np.testing.assert_allclose(
      only_first, msgnet.stylize(model, params, content, styles[:1], style_size=16), atol=1e-6)
  with pytest.raises(ConfigError, match="style weights"):
    msgnet.style_gram(model, params, styles[:2], style_weights=[1.0])


def _request(trained, **kw):
  fields = dict(method="msgnet", content=_content(), styles=[], size=20,
                checkpoint=trained["workdir"])
  fields.update(kw)
  return api.StylizeRequest(**fields)


def test_run_stylize_controls(trained):
  model, params, styles = _loaded(trained)
  from jaxstyle import image  # pylint: disable=g-import-not-at-top
  content = _content()
  # --style_index picks training styles (loaded at --style_size, else --size).
  by_index = api.get_method("msgnet").run_stylize(_request(trained, style_index=[1], style_size=16))
  direct = msgnet.stylize(model, params, content, [image.load_image(trained["styles"][1], 16)])
  np.testing.assert_allclose(by_index, direct, atol=1e-6)
  # Colour preservation: the content's chrominance survives.
  style = image.resize_long_side(styles[2], 16)
  plain = msgnet.run_stylize(_request(trained, styles=[style]))
  kept = msgnet.run_stylize(_request(trained, styles=[style], preserve_color="luminance"))
  np.testing.assert_allclose(kept, image.luminance_transfer(content, plain), atol=1e-6)
  # 'histogram' recolours the style to the content's colours before encoding it.
  matched = msgnet.run_stylize(_request(trained, styles=[style], preserve_color="histogram"))
  np.testing.assert_allclose(
      matched, msgnet.stylize(model, params, content, [image.match_color(style, content)]),
      atol=1e-6)
  assert np.abs(matched - plain).mean() > 1e-5
  for kw, match in ((dict(masks=[np.ones((20, 20))]), "mask"), (dict(alpha=0.5), "alpha"),
                    (dict(style_index=[7]), "out of range"), (dict(checkpoint=None), "checkpoint"),
                    (dict(content=None), "content"), (dict(overrides={"ngf": "8"}), "--set")):
    with pytest.raises(ConfigError, match=match):
      msgnet.run_stylize(_request(trained, styles=styles[:1], **kw))
