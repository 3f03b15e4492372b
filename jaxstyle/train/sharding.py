"""Data parallelism: the one module that knows about the device mesh.

One mesh axis, `'data'`: the global batch is split along it (`P('data')`) and parameters are
replicated (`P()`). The mesh uses the largest device count that divides the global batch, so
every device gets the same number of examples.
"""
from typing import Any, Optional, Sequence

from absl import logging
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxstyle.errors import ConfigError

DATA = "data"


def num_data_devices(batch_size: int, num_devices: int) -> int:
  """The largest device count <= `num_devices` that divides `batch_size`."""
  return max(d for d in range(1, num_devices + 1) if batch_size % d == 0)


def make_mesh(batch_size: int, devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """A 1-D `'data'` mesh over as many of `devices` (default: all) as evenly split `batch_size`."""
  if batch_size < 1:
    raise ConfigError(f"batch size must be positive, got {batch_size}")
  devices = list(jax.devices() if devices is None else devices)
  n = num_data_devices(batch_size, len(devices))
  if n < len(devices):
    logging.warning("batch size %d does not split over %d devices: using %d of them",
                    batch_size, len(devices), n)
  logging.info("mesh: %d %s device(s), %d example(s) each", n, devices[0].platform,
               batch_size // n)
  return jax.make_mesh((n,), (DATA,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def shard_batch(batch: Any, mesh) -> Any:
  """Places a host batch (pytree of arrays with a leading batch axis) split over `'data'`."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(lambda x: jax.device_put(np.asarray(x), sharding), batch)


def state_shardings(trainer: Any, abstract_state: Any, mesh) -> Any:
  """The trainer's `state_sharding(mesh, abstract_state)` if it has one, else all replicated."""
  custom = getattr(trainer, "state_sharding", None)
  if custom is not None:
    return custom(mesh, abstract_state)
  rep = replicated(mesh)
  return jax.tree_util.tree_map(lambda _: rep, abstract_state)


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """`ShapeDtypeStruct`s carrying `shardings` (the restore target for orbax)."""
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
