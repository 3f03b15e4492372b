"""Timing that measures what it says: compile apart, warm-up, block_until_ready, cost analysis.

`time_jax` times a compiled XLA executable; `time_torch` times a PyTorch callable (eager or compiled)
the same way, so that the ratios the benchmark reports compare like with like.
"""
import dataclasses
import time
from typing import Any, Callable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle.benchmark import flops as flops_lib

# Dense peak FLOP/s per device, for utilisation. Sources: NVIDIA H100/H200 SXM datasheets (dense, no
# sparsity). CPUs have no entry: utilisation is then left out rather than guessed.
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 67e12,
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 67e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 19.5e12,
    ("TPU v4", "bfloat16"): 275e12, ("TPU v5e", "bfloat16"): 197e12, ("TPU v5p", "bfloat16"): 459e12,
}


@dataclasses.dataclass
class Timing:
  """Seconds per call over the timed calls after warm-up, and what XLA says of the work.

  `seconds` is the median (robust to the load spikes of a shared machine); `mean` and `stdev`
  describe the spread.
  """
  seconds: float
  stdev: float
  repeats: int
  compile_seconds: Optional[float] = None
  flops: Optional[float] = None          # per call: model FLOPs counted from the jaxpr (flops.py)
  xla_flops: Optional[float] = None      # per call, from XLA's cost analysis of the executable
  peak_bytes: Optional[int] = None       # device peak memory, where the backend reports it
  xla_bytes: Optional[int] = None        # arguments + outputs + temporaries of the executable
  mean: Optional[float] = None
  # Whole process, per timed call (getrusage; None where unavailable): page faults that found no
  # page (the kernel zero-fills one) and kernel time, the cost of fresh host memory every call.
  page_faults: Optional[float] = None
  system_seconds: Optional[float] = None

  @property
  def flops_per_second(self) -> Optional[float]:
    return self.flops / self.seconds if self.flops else None

  @classmethod
  def from_times(cls, times: Sequence[float], **kw) -> "Timing":
    return cls(seconds=float(np.median(times)), stdev=float(np.std(times)), repeats=len(times),
               mean=float(np.mean(times)), **kw)


def device_peak_flops(dtype: str, device=None) -> Optional[float]:
  """Peak dense FLOP/s of `device` for `dtype`, or None when unknown (CPUs)."""
  kind = (device or jax.devices()[0]).device_kind
  for (name, dt), peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower() and dt == dtype:
      return peak
  return None


def _flops(compiled) -> Optional[float]:
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Some backends do not implement it.
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def speed_probe(size: Optional[int] = None, seconds: float = 0.2) -> dict:
  """How fast the device is right now: a float32 `size`^3 matmul (compute) and an elementwise
  pass over 128 MiB (memory bandwidth, read + write), each timed for `seconds`.

  The benchmark runs it at the start and at the end: on a shared machine (a VM whose neighbours
  come and go) a whole run can be 40% slower one hour than the next, which moves the absolute
  numbers and, where the libraries suffer unequally, the ratios. The probe can show such a phase.
  """
  size = size or (512 if jax.default_backend() == "cpu" else 4096)
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul).lower(a, a).compile()
  big = jnp.zeros((1 << 25,), jnp.float32)
  stream = jax.jit(lambda x: x * 0.5 + 1.0).lower(big).compile()

  def median_seconds(fn, *args):  # after as long of warm-up, which wakes the threads and clocks
    _timed_loop(lambda: fn(*args), jax.block_until_ready, 1, seconds)
    return float(np.median(_timed_loop(lambda: fn(*args), jax.block_until_ready, 10, seconds)))
  return {"size": size, "gflops": 2 * size ** 3 / median_seconds(matmul, a, a) / 1e9,
          "gbps": 2 * big.nbytes / median_seconds(stream, big) / 1e9}


def _peak_bytes() -> Optional[int]:
  stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _xla_bytes(compiled) -> Optional[int]:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend implements it.
    return None
  if m is None:
    return None
  parts = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
           "alias_size_in_bytes")
  sizes = [getattr(m, p, None) for p in parts]
  if sizes[0] is None:
    return None
  # Donated (aliased) outputs reuse argument buffers: count them once.
  return int(sum(v or 0 for v in sizes[:3]) - (sizes[3] or 0))


def _rusage():
  try:
    import resource  # pylint: disable=g-import-not-at-top  # Unix only
  except ImportError:
    return None
  r = resource.getrusage(resource.RUSAGE_SELF)
  return np.array([r.ru_minflt, r.ru_stime])


class _HostCost:
  """Page faults and system seconds summed over timed calls (see `Timing.page_faults`)."""

  def __init__(self):
    self.total, self.calls = np.zeros(2), 0

  def per_call(self):
    if not self.calls:  # nothing timed, or no getrusage here (`_timed_loop` then counts nothing)
      return {}
    faults, system = self.total / self.calls
    return {"page_faults": float(faults), "system_seconds": float(system)}


def _timed_loop(call: Callable[[], Any], sync: Callable[[Any], Any], repeats: int,
                min_seconds: float, host: Optional[_HostCost] = None) -> List[float]:
  times = []
  before = _rusage()
  start_all = time.perf_counter()
  while len(times) < repeats or (time.perf_counter() - start_all < min_seconds and len(times) < 1000):
    t0 = time.perf_counter()
    sync(call())
    times.append(time.perf_counter() - t0)
  if host is not None and before is not None:
    host.total += _rusage() - before
    host.calls += len(times)
  return times


class JaxBench:
  """A compiled XLA executable ready to be timed in several rounds (compile timed apart).

  With `carry=True` the first output is fed back as the first argument (a train step or an
  optimiser iteration), which is what makes donation of the state possible without re-creating it
  each call.
  """

  def __init__(self, fn: Callable, args: Sequence[Any], *, donate_argnums=(), carry: bool = False,
               compiler_options: Optional[dict] = None):
    jitted = jax.jit(fn, donate_argnums=donate_argnums)
    t0 = time.perf_counter()
    traced = jitted.trace(*args)
    self.compiled = traced.lower().compile(compiler_options=compiler_options)
    self.compile_seconds = time.perf_counter() - t0
    self.flops = flops_lib.count_jaxpr(traced.jaxpr) or None
    self.xla_flops = _flops(self.compiled)
    self.xla_bytes = _xla_bytes(self.compiled)
    self.carry = carry
    self.args = list(args)
    self.times: List[float] = []
    self.host = _HostCost()

  def call(self):
    out = self.compiled(*self.args)
    if self.carry:
      self.args[0] = out[0] if isinstance(out, tuple) else out
    return out

  def run(self, repeats: int, warmup: int = 0, min_seconds: float = 0.0) -> List[float]:
    for _ in range(warmup):
      jax.block_until_ready(self.call())
    times = _timed_loop(self.call, jax.block_until_ready, repeats, min_seconds, self.host)
    self.times += times
    return times

  def timing(self) -> Timing:
    return Timing.from_times(self.times, compile_seconds=self.compile_seconds, flops=self.flops,
                             xla_flops=self.xla_flops, peak_bytes=_peak_bytes(),
                             xla_bytes=self.xla_bytes, **self.host.per_call())


class TorchBench:
  """A PyTorch callable timed like `JaxBench`; the first (warm-up) calls include torch.compile."""

  def __init__(self, fn: Callable[[], Any]):
    import torch  # pylint: disable=g-import-not-at-top
    self._torch = torch
    self.fn = fn
    self.first_seconds: Optional[float] = None
    self.times: List[float] = []
    self.host = _HostCost()

  def _sync(self, out):
    if self._torch.cuda.is_available():
      self._torch.cuda.synchronize()
    return out

  def run(self, repeats: int, warmup: int = 0, min_seconds: float = 0.0) -> List[float]:
    if self.first_seconds is None:
      t0 = time.perf_counter()
      self._sync(self.fn())  # The first call of a torch.compile'd function compiles.
      self.first_seconds = time.perf_counter() - t0
    for _ in range(warmup):
      self._sync(self.fn())
    times = _timed_loop(self.fn, self._sync, repeats, min_seconds, self.host)
    self.times += times
    return times

  def timing(self) -> Timing:
    torch = self._torch
    peak = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    return Timing.from_times(self.times, compile_seconds=self.first_seconds, peak_bytes=peak,
                             **self.host.per_call())


def time_jax(fn: Callable, args: Sequence[Any], *, repeats: int = 10, warmup: int = 2,
             min_seconds: float = 0.0, donate_argnums=(), carry: bool = False) -> Timing:
  """Compiles `fn(*args)` once (timed apart), then times `repeats` calls (see `JaxBench`)."""
  bench = JaxBench(fn, args, donate_argnums=donate_argnums, carry=carry)
  bench.run(repeats, warmup, min_seconds)
  return bench.timing()


def time_torch(fn: Callable, args: Sequence[Any], *, repeats: int = 10, warmup: int = 2,
               min_seconds: float = 0.0) -> Timing:
  """Times a PyTorch callable `fn(*args)` (see `TorchBench`)."""
  bench = TorchBench(lambda: fn(*args))
  bench.run(repeats, max(warmup - 1, 0), min_seconds)
  return bench.timing()
