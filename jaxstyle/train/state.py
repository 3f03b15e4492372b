"""The training state every trainer keeps: step, parameters, optimiser state and free extras.

Several optimisers (GANs, TSPR's three Adams) live in one state: pass `tx` as a dict of optax
transformations keyed like the top level of a dict of `params`, e.g.

  state = TrainState.create({'gen': g_params, 'disc': d_params},
                            {'gen': optax.adam(2e-4, b1=0.5), 'disc': optax.adam(2e-4, b1=0.5)})
  state = state.apply_gradients({'disc': d_grads})   # updates only the discriminator
  state = state.apply_gradients({'gen': g_grads})    # then the generator, in the same step

Each part keeps its own optimiser state, so an update of one part never touches the other's
moments (unlike `optax.multi_transform` with zero gradients, which would still decay them).
"""
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a jitted train step reads and returns.

  Attributes:
    step: int32 scalar, the number of steps taken (skipped non-finite steps count too; the loop
      owns it, so `apply_gradients` leaves it alone).
    params: trained parameters (f32 pytree).
    opt_state: optimiser state (a dict of states when `tx` is a dict).
    extra: free pytree that is checkpointed and reverted with the params on a non-finite step:
      batch statistics, EMA copies, image pools, ...
    frozen: arrays the step reads but never changes (e.g. loss-network weights). Travels as an
      argument into the jitted step (never baked into the executable), is not checkpointed, and
      is rebuilt by `trainer.init` on resume.
    tx: the optax transformation (or dict of them); static.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  extra: Any = None
  frozen: Any = None
  tx: Any = flax.struct.field(pytree_node=False, default=None)

  @classmethod
  def create(cls, params, tx, extra=None, frozen=None) -> "TrainState":
    """Builds a state at step 0; `tx` is one optax transformation or a dict keyed like `params`."""
    if isinstance(tx, Mapping):
      _check_parts(params, tx)
      tx = flax.core.FrozenDict(tx)
      opt_state = {k: t.init(params[k]) for k, t in tx.items()}
    else:
      opt_state = tx.init(params)
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, extra=extra,
               frozen=frozen, tx=tx)

  def apply_gradients(self, grads, **changes) -> "TrainState":
    """Applies one optimiser update (to the parts named in `grads` when `tx` is a dict).

    Args:
      grads: pytree like `params`, or, for a dict `tx`, a dict with a subset of its keys.
      **changes: other fields to replace at the same time (e.g. `extra=new_batch_stats`).
    Returns:
      The updated state; `step` is unchanged (the training loop advances it).
    """
    if isinstance(self.tx, Mapping):
      params, opt_state = dict(self.params), dict(self.opt_state)
      for key, g in grads.items():
        if key not in self.tx:
          raise KeyError(f"no optimiser for params part {key!r}; parts: {sorted(self.tx)}")
        updates, opt_state[key] = self.tx[key].update(g, opt_state[key], params[key])
        params[key] = optax.apply_updates(params[key], updates)
      params = type(self.params)(params) if isinstance(self.params, flax.core.FrozenDict) else params
    else:
      updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
      params = optax.apply_updates(self.params, updates)
    return self.replace(params=params, opt_state=opt_state, **changes)


def clip_gradients(state: TrainState, max_norm: float) -> TrainState:
  """`state` with every optimiser preceded by `optax.clip_by_global_norm(max_norm)`.

  With a dict `tx`, each part's gradient is clipped by its own norm (the generator's and the
  discriminator's gradients are separate updates). The optimiser states are rebuilt (by
  `create`), so call it on a fresh state; `max_norm <= 0` returns `state` unchanged.
  """
  if max_norm <= 0:
    return state
  clip = lambda t: optax.chain(optax.clip_by_global_norm(max_norm), t)
  tx = ({k: clip(t) for k, t in state.tx.items()} if isinstance(state.tx, Mapping)
        else clip(state.tx))
  return TrainState.create(state.params, tx, extra=state.extra,
                           frozen=state.frozen).replace(step=state.step)


def _check_parts(params, tx: Mapping):
  if not isinstance(params, Mapping) or set(params) != set(tx):
    keys = sorted(params) if isinstance(params, Mapping) else type(params).__name__
    raise ValueError(f"a dict of optimisers needs params with the same keys: tx has "
                     f"{sorted(tx)}, params has {keys}")


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
