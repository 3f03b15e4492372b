"""The contract between a method's trainer, its dataset and the shared training loop.

A method's `make_trainer(request)` returns `(trainer, dataset)`; `loop.train(trainer, dataset,
request)` does the rest (mesh, jit, RNG, non-finite guard, checkpoints, summaries, signals).

Required trainer methods (all pure; they see JAX arrays and are jitted by the loop):

  init(rng, batch) -> TrainState
      `batch` is the global batch of step 0 (use it for shapes only).
  train_step(state, batch, rng) -> (state, metrics)
      One optimisation step. `metrics` is a flat dict of scalars and must hold 'loss'. Do not
      advance `state.step` (the loop does, also on skipped steps) and do not fold the step into
      `rng` (the loop already did: rng = fold_in(key, step)).
  sample(state, batch) -> images [B, H, W, 3] float32 in [0, 1]
      What the image summaries show (e.g. the stylized content batch).

Optional trainer hooks (looked up with `getattr`):

  config_dict() -> dict
      JSON-able settings that rebuild the model at inference; saved as `workdir/config.json`
      under "config" (next to "method" and the "train" request), read back with
      `checkpoint.load_config(workdir)`.
  make_step(mesh) -> step_fn
      For trainers whose step is already an SPMD program (TSPR's `jax.shard_map` with
      per-device kNN and `lax.pmean`): the loop passes the mesh (one axis, `sharding.DATA`) and
      uses `step_fn(state, batch, rng) -> (state, metrics)` instead of `train_step`. The loop
      still wraps it in the non-finite guard and `jax.jit`; the batch arrives sharded
      `P('data')` and the state replicated, exactly what `shard_map(in_specs=(P(), P('data'),
      P()))` expects.
  state_sharding(mesh, abstract_state) -> pytree of shardings
      To shard parameters (default: everything replicated, `P()`).

A dataset has `batch(step, batch_size) -> dict[str, np.ndarray]`, a pure function of its seed and
`step` (so resuming needs only the step), and optionally `num_skipped` and `close()`.
"""
from typing import Any, Dict, Protocol, Tuple, runtime_checkable

import jax
import numpy as np

from jaxstyle.train.state import TrainState

Batch = Dict[str, Any]
Metrics = Dict[str, jax.Array]


@runtime_checkable
class Trainer(Protocol):
  """What every feed-forward method implements (see the module docstring)."""

  def init(self, rng: jax.Array, batch: Batch) -> TrainState:
    ...

  def train_step(self, state: TrainState, batch: Batch, rng: jax.Array
                 ) -> Tuple[TrainState, Metrics]:
    ...

  def sample(self, state: TrainState, batch: Batch) -> jax.Array:
    ...


@runtime_checkable
class Dataset(Protocol):
  """Deterministic batches: `batch(step, batch_size)` depends only on the seed and `step`."""

  def batch(self, step: int, batch_size: int) -> Dict[str, np.ndarray]:
    ...


def check_trainer(trainer: Any) -> None:
  """Raises TypeError naming the missing methods when `trainer` does not implement `Trainer`."""
  missing = [m for m in ("init", "train_step", "sample") if not callable(getattr(trainer, m, None))]
  if missing:
    raise TypeError(f"{type(trainer).__name__} is not a Trainer: missing {', '.join(missing)}")
