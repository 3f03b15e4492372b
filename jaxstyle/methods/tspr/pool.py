"""Image history buffer for the discriminator (Shrivastava et al. 2017; CycleGAN's `ImagePool`).

The discriminator sees, for each generated image, either that image or (with probability 1/2 once the
buffer is full) an older one from the buffer, which the new image then replaces. The buffer is a plain
array in the train state, updated by a pure function on the *global* batch (every device computes the
same update from the same key), so it is identical under any device split and checkpointed with the
rest of the state.
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def init(size: int, item_shape: Tuple[int, ...]) -> Dict[str, Array]:
  """An empty buffer of `size` items of `item_shape` (`size` 0: the pool is a no-op)."""
  count = jnp.zeros((), jnp.int32)
  if size == 0:  # no zero-size array: checkpoints cannot store them
    return {"count": count}
  return {"items": jnp.zeros((size,) + tuple(item_shape), jnp.float32), "count": count}


def query(pool: Dict[str, Array], items: Array, key: Array) -> Tuple[Dict[str, Array], Array]:
  """Returns `(new_pool, out)`: `out[i]` is `items[i]` or a buffered item it replaced.

  Args:
    pool: from `init`.
    items: `[B, ...]` new items (e.g. stacked real/fake/paired images).
    key: PRNG key of this step.
  """
  if "items" not in pool:
    return pool, items
  size = pool["items"].shape[0]

  def one(carry, xs):
    buf, count = carry
    i, x = xs
    k_swap, k_pick = jax.random.split(jax.random.fold_in(key, i))
    filling = count < size
    swap = (~filling) & (jax.random.uniform(k_swap) > 0.5)
    j = jnp.where(filling, count, jax.random.randint(k_pick, (), 0, size))
    old = buf[j]
    buf = buf.at[j].set(jnp.where(filling | swap, x, old))
    out = jnp.where(swap, old, x)
    return (buf, count + filling.astype(jnp.int32)), out

  (buf, count), out = jax.lax.scan(one, (pool["items"], pool["count"]),
                                   (jnp.arange(items.shape[0]), items.astype(jnp.float32)))
  return {"items": buf, "count": count}, out.astype(items.dtype)
