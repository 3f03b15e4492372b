"""A tiny trainer for the training-stack tests, runnable as a training script.

The model is a 2-layer conv net that learns a fixed colour transform of the input image; small
enough that a step takes milliseconds on CPU.

  python tests/_toy_trainer.py --workdir=/tmp/w --steps=20 --checkpoint_every=5
prints `step N` after every step (the subprocess tests use it to time their signals) and
`final <sha256 of the params>` at the end.
"""
import argparse
import hashlib
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxstyle import api  # noqa: E402
from jaxstyle.train.state import TrainState  # noqa: E402

_MIX = np.array([[0.2, 0.7, 0.1], [0.6, 0.1, 0.3], [0.1, 0.3, 0.6]], np.float32)


def target(x):
  """The transform to learn: a channel mix plus an offset."""
  return x @ _MIX.T * 0.8 + 0.1


class ToyNet(nn.Module):
  """Conv 3x3 (channels) -> ReLU -> conv 1x1 (3), plus a linear 1x1 path: [B,H,W,3] -> [B,H,W,3]."""
  channels: int = 4

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(self.channels, (3, 3))(x))
    return nn.Conv(3, (1, 1))(h) + nn.Conv(3, (1, 1), name="linear")(x)


class ToyTrainer:
  """Implements `jaxstyle.train.api.Trainer`; `nan_steps` makes those steps' loss NaN."""

  def __init__(self, channels=4, learning_rate=3e-2, nan_steps=(), noise=0.01):
    self.model = ToyNet(channels)
    self.learning_rate = learning_rate
    self.nan_steps = tuple(nan_steps)
    self.noise = noise
    self.traces = 0

  def init(self, rng, batch):
    params = self.model.init(rng, batch["image"][:1])
    return TrainState.create(params, optax.adam(self.learning_rate),
                             extra={"seen": jnp.zeros((), jnp.float32)},
                             frozen={"mix": jnp.asarray(_MIX)})

  def train_step(self, state, batch, rng):
    self.traces += 1  # runs only while tracing
    x = batch["image"]
    # Input noise from the step RNG, so RNG handling shows up in the parameters.
    x_in = x + self.noise * jax.random.normal(rng, x.shape)
    y = x @ state.frozen["mix"].T * 0.8 + 0.1

    def loss_fn(params):
      return jnp.mean((self.model.apply(params, x_in) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    if self.nan_steps:
      poison = jnp.isin(state.step, jnp.asarray(self.nan_steps))
      grads = jax.tree_util.tree_map(lambda g: jnp.where(poison, jnp.nan, g), grads)
      loss = jnp.where(poison, jnp.nan, loss)
    state = state.apply_gradients(grads, extra={"seen": state.extra["seen"] + x.shape[0]})
    return state, {"loss": loss, "pixel_mean": jnp.mean(x)}

  def sample(self, state, batch):
    return jnp.clip(self.model.apply(state.params, batch["image"]), 0, 1)

  def config_dict(self):
    return {"channels": self.model.channels}


class NoiseImages:
  """Deterministic random images: batch(step) depends only on (seed, step)."""

  def __init__(self, image_size=8, seed=0):
    self.image_size, self.seed = image_size, seed
    self.requested = []

  def batch(self, step, batch_size):
    self.requested.append(step)
    rng = np.random.default_rng([self.seed, step])
    return {"image": rng.uniform(size=(batch_size, self.image_size, self.image_size, 3))
                        .astype(np.float32)}


def params_digest(params) -> str:
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(jax.device_get(params)):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def compile_cache(directory):
  """Generator for a pytest fixture: a persistent XLA cache in `directory`, restored afterwards."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  for name, value in zip(names, (str(directory), 0.0, -1)):
    jax.config.update(name, value)
  yield str(directory)
  for name, value in old.items():
    jax.config.update(name, value)


def request(workdir, **kwargs):
  defaults = dict(method="toy", content_dir=None, style_dir=None, workdir=str(workdir),
                  image_size=8, batch_size=8, steps=10, checkpoint_every=5, keep_checkpoints=3,
                  log_every=5, summary_every=100, max_nonfinite=3)
  defaults.update(kwargs)
  return api.TrainRequest(**defaults)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--checkpoint_every", type=int, default=5)
  parser.add_argument("--batch_size", type=int, default=8)
  args = parser.parse_args()
  from jaxstyle.train import loop  # pylint: disable=g-import-not-at-top

  def report(step, state, metrics):
    print(f"step {step}", flush=True)

  req = request(args.workdir, steps=args.steps, checkpoint_every=args.checkpoint_every,
                batch_size=args.batch_size)
  state = loop.train(ToyTrainer(), NoiseImages(), req, hooks=[report])
  print(f"final {int(state.step)} {params_digest(state.params)}", flush=True)


if __name__ == "__main__":
  main()
