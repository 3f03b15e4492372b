"""Host memory retention: the second large malloc/free cycle reuses pages instead of faulting."""
import subprocess
import sys

import pytest

from jaxstyle import hostmem

_CYCLE = r"""
import ctypes, ctypes.util, resource, sys, threading
from jaxstyle import hostmem
mode = sys.argv[1]
if mode == "default":
  assert hostmem.settings() == {"retain": False, "single_arena": False}
else:
  single = mode.startswith("single")
  assert hostmem.retain_freed_memory(single_arena=single) and hostmem.retain_freed_memory()
  assert hostmem.settings() == {"retain": True, "single_arena": single}
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def cycle(n=80 << 20):  # Larger than glibc's largest mmap threshold (32 MB), like XLA's temps.
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
def measure():
  cycle()
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  cycle()
  print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
if mode.endswith("thread"):  # as on XLA's worker threads (their own malloc arenas)
  t = threading.Thread(target=measure)
  t.start()
  t.join()
else:
  measure()
"""


def _second_cycle_faults(mode: str) -> int:
  out = subprocess.run([sys.executable, "-c", _CYCLE, mode], capture_output=True, text=True,
                       check=True)
  return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(hostmem._libc() is None, reason="needs glibc's mallopt")  # pylint: disable=protected-access
def test_retained_memory_is_reused_without_page_faults():
  pages = (80 << 20) // 4096
  # By default the 80 MB block is a fresh mapping each time: every page faults again.
  assert _second_cycle_faults("default") > pages // 2
  assert _second_cycle_faults("retain") < pages // 20
  # A worker thread's own arena cannot hold the block: only a single arena keeps its pages.
  assert _second_cycle_faults("retain-thread") > pages // 2
  assert _second_cycle_faults("single-thread") < pages // 20
