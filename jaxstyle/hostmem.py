"""Host memory reuse: keep XLA:CPU's large temporaries mapped between calls.

XLA:CPU takes every call's temporaries from `malloc` (65 MB for a Gatys iteration at 128 px, more
for AdaIN's two VGG19 passes). glibc serves blocks that large with a fresh `mmap` and unmaps them on
`free`, so each call touches new pages and the kernel zero-fills every one on first touch: 16,000
page faults and ~30 ms of system time per 128 px Gatys iteration on the 2-core development machine,
a sixth of the iteration's CPU time, spent on memory it already had a moment before. Allocations on
XLA's worker threads land in per-thread arenas whose heaps cannot hold such blocks and fall back to
`mmap` too.

`retain_freed_memory` turns that off for the process: large blocks come from the main heap
(`M_MMAP_MAX` 0), freed memory stays with the process (`M_TRIM_THRESHOLD`) and all threads share
the main arena (`M_ARENA_MAX` 1), so the second call reuses the first call's pages. The cost is a
resident size that stays at its peak. The launchers call it on start-up unless
`--noretain_host_memory` is given; it only exists on glibc (Linux) and does nothing elsewhere.
"""
import ctypes
import ctypes.util
import sys

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_retained = False


def _libc():
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None
  return libc if hasattr(libc, "mallopt") else None  # musl has no mallopt.


def retain_freed_memory() -> bool:
  """Makes malloc keep and reuse freed memory (see the module docstring); True if it could.

  Call it early, before JAX runs anything: arenas that threads already own stay as they are.
  Idempotent.
  """
  global _retained
  if _retained:
    return True
  libc = _libc()
  if libc is None:
    return False
  ok = all(libc.mallopt(param, value) == 1 for param, value in
           ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_ARENA_MAX, 1)))
  _retained = ok
  return ok


def retained() -> bool:
  """Whether `retain_freed_memory` is in effect for this process."""
  return _retained
