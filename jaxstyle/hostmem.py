"""The host process as XLA:CPU uses it: its thread count, and memory reuse between calls.

XLA:CPU takes every call's temporaries from `malloc` (65 MB for a Gatys iteration at 128 px, more
for AdaIN's two VGG19 passes). glibc serves blocks that large with a fresh `mmap` and unmaps them on
`free`, so each call touches new pages and the kernel zero-fills every one on first touch: 16,000
page faults and ~30 ms of system time per 128 px Gatys iteration on the 2-core development machine,
a sixth of the iteration's CPU time, spent on memory it already had a moment before. Allocations on
XLA's worker threads land in per-thread arenas whose heaps cannot hold such blocks and fall back to
`mmap` too.

`retain_freed_memory` turns that off for the process: large blocks come from the main heap
(`M_MMAP_MAX` 0) and freed memory stays with the process (`M_TRIM_THRESHOLD`), so the next call
reuses the same pages: 15,838 -> ~0-2,000 faults per Gatys iteration, for a peak resident size
~10% higher (Gatys at 512 px: 2.46 -> 2.68 GB). Allocations on XLA's worker threads still fault
(per-thread arenas cannot hold such blocks). `single_arena=True` also serves those threads from
the main heap (`M_ARENA_MAX` 1): AdaIN and TSPR inference at 128 px then lose their remaining
20-30k faults per call (~10-15% faster), but fragmentation can double the peak resident size
(Gatys at 512 px: 4.6 GB); synchronous dispatch (below) removes the same faults without that.
The launchers call it on start-up (`--retain_host_memory`, default on; `--single_malloc_arena`,
default off). It only exists on glibc (Linux) and does nothing elsewhere.

Those remaining faults come with JAX's asynchronous CPU dispatch: a call returns at once and XLA
runs the program on a runtime thread. `set_cpu_async_dispatch(False)` runs each call on the calling
thread instead. Measured at 128 px on the 2-core machine, memory retained either way: AdaIN
inference 104 -> 80 ms per call and 17.6k -> 50 page faults, MSG-Net 78 -> 45 ms, a Johnson training
run +8% steps/s, a Gatys run ~10% less wall time, the same peak resident size. The launchers turn it
off on start-up (`--cpu_async_dispatch`, default off). Python then no longer queues the next call
while one runs, which a training loop does not miss: its batches are decoded on a background thread,
and XLA releases the GIL while it computes.
"""
import ctypes
import ctypes.util
import os
import sys

import jax

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_settings = {"retain": False, "single_arena": False}


def cpu_threads() -> int:
  """Threads XLA's CPU backend runs on: one per schedulable core (its default thread pool size)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def _libc():
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None
  return libc if hasattr(libc, "mallopt") else None  # musl has no mallopt.


def retain_freed_memory(single_arena: bool = False) -> bool:
  """Makes malloc keep and reuse freed memory (see the module docstring); True if it could.

  Call it early, before JAX runs anything: arenas that threads already own stay as they are.
  Calling it again can add `single_arena`, never take it away.
  """
  libc = _libc()
  if libc is None:
    return False
  params = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX)]
  if single_arena:
    params.append((_M_ARENA_MAX, 1))
  if not all(libc.mallopt(param, value) == 1 for param, value in params):
    return False
  _settings["retain"] = True
  _settings["single_arena"] = _settings["single_arena"] or single_arena
  return True


def set_cpu_async_dispatch(enabled: bool) -> bool:
  """Sets whether XLA:CPU calls return before they finish (see the module docstring).

  Only takes effect before JAX creates its backends (before anything runs); returns False, and
  changes nothing, when they exist already with the other setting.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  # no public predicate
  current = bool(jax.config.read("jax_cpu_enable_async_dispatch"))
  if current != enabled:
    if xla_bridge.backends_are_initialized():
      return False
    jax.config.update("jax_cpu_enable_async_dispatch", enabled)
  return True


def settings() -> dict:
  """{'retain', 'single_arena', 'cpu_async_dispatch': bool} as set for this process."""
  return dict(_settings, cpu_async_dispatch=bool(jax.config.read("jax_cpu_enable_async_dispatch")))
