"""Wraps a trainer's step into the loop's jitted step: step RNG, non-finite guard, skip counter."""
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp

from jaxstyle.train.state import TrainState

StepFn = Callable[[TrainState, Any, jax.Array], Tuple[TrainState, dict]]


def _finite(tree) -> jax.Array:
  oks = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
         if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(oks)) if oks else jnp.array(True)


def _scalar(name, value):
  value = jnp.asarray(value)
  if value.ndim:  # a per-example metric: summaries want one number
    value = jnp.mean(value)
  return value.astype(jnp.float32)


def guarded(step_fn: StepFn, on_trace: Callable[[], None] = lambda: None):
  """Returns `fn(state, batch, key, bad) -> (state, metrics, bad)` around `step_fn`.

  - The step's RNG is `fold_in(key, state.step)`, so it depends only on the step number.
  - If the loss, any metric or any new parameter is non-finite, the step is skipped: params,
    opt_state and extra stay as they were. `step` advances either way (so the next step sees new
    data and a new RNG). `metrics['nonfinite']` is 1 for a skipped step and `bad` counts
    consecutive skips (the loop stops when it reaches `max_nonfinite`).
  """

  def fn(state: TrainState, batch, key: jax.Array, bad: jax.Array):
    on_trace()
    rng = jax.random.fold_in(key, state.step)
    new, metrics = step_fn(state, batch, rng)
    if "loss" not in metrics:
      raise KeyError(f"train_step metrics must hold 'loss'; got {sorted(metrics)}")
    metrics = {k: _scalar(k, v) for k, v in metrics.items()}
    ok = _finite(metrics) & _finite(new.params)
    keep = lambda n, o: jnp.where(ok, n, o)
    trained = jax.tree_util.tree_map(keep, (new.params, new.opt_state, new.extra),
                                     (state.params, state.opt_state, state.extra))
    out = new.replace(step=state.step + 1, params=trained[0], opt_state=trained[1],
                      extra=trained[2], frozen=state.frozen)
    metrics["nonfinite"] = jnp.where(ok, 0.0, 1.0).astype(jnp.float32)
    bad = jnp.where(ok, 0, bad + 1).astype(jnp.int32)
    return out, metrics, bad

  return fn
