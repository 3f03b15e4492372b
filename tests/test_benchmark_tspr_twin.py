"""The PyTorch twin of TSPR's three-phase train step: one step equals the JAX step with the same
random draws, each phase's gradient reaches only its own parameter group, and timed calls are
consecutive steps with torch's own draws."""
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from jaxstyle.benchmark import model_cases  # noqa: E402
from jaxstyle.benchmark import torch_tspr_train as ttt  # noqa: E402
from jaxstyle.methods import tspr  # noqa: E402
from jaxstyle.methods.tspr import trainer as tspr_trainer  # noqa: E402


@pytest.fixture(scope="module")
def step():
  """A small TSPR trainer, its benchmark case and the JAX reference of one step."""
  # No residual blocks keeps the program small; 32 px gives 64 latent positions, and
  # the global-style branch reaches 1x1 (where the twin's instance norm must give zeros).
  config = tspr.TSPRConfig(ngf=4, ndf=4, n_blocks=0)
  size, batch = 32, 2
  trainer = tspr_trainer.TSPRTrainer(config, global_batch=batch, image_size=size)
  x, style = model_cases.train_images(0, batch, size), model_cases.train_images(2, batch, size)
  data = {"content": x, "content_peer": x[::-1], "style": style, "style_peer": style[::-1],
          "label": jnp.zeros((batch,), jnp.int32)}
  case = model_cases.train_case(
      "tspr", trainer, data, batch, b1=config.beta1,
      twin=model_cases.train_twin("tspr_train_twin", "torch_tspr_train", keyed=True))
  reference = case.reference(jax.jit(case.fn, donate_argnums=case.donate_argnums)(
      *case.fresh_args()))
  return trainer, case, reference


def test_twin_matches_one_jax_step(step):
  trainer, case, reference = step
  twin = case.torch()
  err, tol = twin.check(reference)
  assert tol == ttt.TOLERANCE and err <= 3e-4, err
  # The check is real: a 5% different loss, gradient or Adam step is caught (the tolerance is
  # loose for the full-size networks' float32 gradient; small ones agree far closer, above).
  bad_params = reference["params"] + 0.05 * trainer.lr * np.sign(reference["grads"])
  for key, value in (("loss", 1.05 * reference["loss"]), ("grads", 1.05 * reference["grads"]),
                     ("params", bad_params)):
    assert twin.check(dict(reference, **{key: value}))[0] > tol, key
  # Timed calls are consecutive Adam steps with torch's draws: near the reference, then falling.
  call = twin.make_fn(False)
  losses = [float(call()) for _ in range(4)]
  assert losses[0] == pytest.approx(reference["loss"], rel=0.05) and losses[-1] < losses[0]


def test_gradients_and_draws_must_follow_the_trainer(step, monkeypatch):
  _, case, reference = step
  # The main phase's loss reaching the encoder or the discriminator changes their gradients.
  with monkeypatch.context() as m:
    m.setattr(ttt, "_frozen", lambda module: module)
    assert case.torch().check(reference)[0] > ttt.TOLERANCE
  # Dropout masks and discriminator noise of torch's generator instead of the JAX step's.
  with monkeypatch.context() as m:
    m.setattr(ttt, "jax_draws", lambda config, rng, b, size: ttt.torch_draws(config, b, size))
    assert case.torch().check(reference)[0] > ttt.TOLERANCE


def test_learning_rate_factor_is_the_trainers_schedule():
  config = tspr.TSPRConfig(epoch_size=8, niter=2, niter_decay=3)
  want = tspr_trainer.lr_schedule(config, 2, 1.0)
  factor = ttt.lr_factor(config, 2)
  got = [factor(s) for s in range(30)]
  np.testing.assert_allclose(got, [float(want(s)) for s in range(30)], atol=1e-7)
  assert got[0] == 1.0 and got[-1] == 0.0 and 0 < got[14] < 1


def test_image_pool_fills_then_swaps_half_the_time():
  random.seed(0)
  pool = ttt.ImagePool(3)
  items = torch.arange(10, dtype=torch.float32).reshape(10, 1)
  np.testing.assert_array_equal(pool.query(items[:3]).numpy(), items[:3].numpy())  # filling
  out = torch.cat([pool.query(items[i:i + 1]) for i in range(3, 10)]).ravel().tolist()
  # Full: each item is passed through or swapped for an earlier one, which it replaces.
  swapped = [(i, o) for i, o in zip(range(3, 10), out) if o != i]
  assert 0 < len(swapped) < 7 and all(o < i for i, o in swapped)
  held = sorted(float(t) for t in pool.items)
  assert len(held) == 3 and not set(held) & {o for _, o in swapped}
  assert ttt.ImagePool(0).query(items) is items
