"""Mixed precision: bf16 compute with f32 parameters and optimiser state."""
from typing import Any

import jax
import jax.numpy as jnp


def compute_dtype(request) -> jnp.dtype:
  """The dtype models should compute in: bfloat16 under `request.mixed_precision`, else float32.

  Parameters always stay float32 (pass `param_dtype=jnp.float32, dtype=compute_dtype(request)` to
  linen layers); losses should be reduced in float32 (see `to_float32`).
  """
  return jnp.bfloat16 if getattr(request, "mixed_precision", False) else jnp.float32


def cast_floating(tree: Any, dtype) -> Any:
  """Casts the floating-point leaves of `tree` to `dtype`, leaving integers alone."""
  def cast(x):
    x = jnp.asarray(x)
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree_util.tree_map(cast, tree)


def to_float32(tree: Any) -> Any:
  """Casts floating leaves back to float32 (before losses and summaries)."""
  return cast_floating(tree, jnp.float32)
