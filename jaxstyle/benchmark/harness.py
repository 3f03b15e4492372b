"""Timing that measures what it says: compile apart, warm-up, block_until_ready, cost analysis.

`time_jax` times a compiled XLA executable; `time_torch` times a PyTorch callable (eager or compiled)
the same way, so that the ratios the benchmark reports compare like with like.
"""
import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

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
  """Seconds per call (mean over `repeats` timed calls after warm-up) and what XLA says of the work."""
  seconds: float
  stdev: float
  repeats: int
  compile_seconds: Optional[float] = None
  flops: Optional[float] = None          # per call, from XLA's cost analysis
  peak_bytes: Optional[int] = None       # device peak memory, where the backend reports it

  @property
  def flops_per_second(self) -> Optional[float]:
    return self.flops / self.seconds if self.flops else None


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


def _peak_bytes() -> Optional[int]:
  stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _timed_loop(call: Callable[[], Any], sync: Callable[[Any], Any], repeats: int,
                min_seconds: float) -> Sequence[float]:
  times = []
  start_all = time.perf_counter()
  while len(times) < repeats or (time.perf_counter() - start_all < min_seconds and len(times) < 1000):
    t0 = time.perf_counter()
    sync(call())
    times.append(time.perf_counter() - t0)
  return times


def time_jax(fn: Callable, args: Sequence[Any], *, repeats: int = 10, warmup: int = 2,
             min_seconds: float = 0.0, donate_argnums=(), carry: bool = False) -> Timing:
  """Compiles `fn(*args)` once (timed apart), then times `repeats` calls.

  With `carry=True` the first output is fed back as the first argument (a train step or an optimiser
  iteration), which is what makes donation of the state possible without re-creating it each call.
  """
  jitted = jax.jit(fn, donate_argnums=donate_argnums)
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_seconds = time.perf_counter() - t0
  state = {"args": list(args)}

  def call():
    out = compiled(*state["args"])
    if carry:
      state["args"][0] = out[0] if isinstance(out, tuple) else out
    return out

  for _ in range(warmup):
    jax.block_until_ready(call())
  times = _timed_loop(call, jax.block_until_ready, repeats, min_seconds)
  return Timing(seconds=float(np.mean(times)), stdev=float(np.std(times)), repeats=len(times),
                compile_seconds=compile_seconds, flops=_flops(compiled), peak_bytes=_peak_bytes())


def time_torch(fn: Callable, args: Sequence[Any], *, repeats: int = 10, warmup: int = 2,
               min_seconds: float = 0.0) -> Timing:
  """Times a PyTorch callable under `torch.no_grad` unless it needs gradients itself."""
  import torch  # pylint: disable=g-import-not-at-top

  def sync(out):
    if torch.cuda.is_available():
      torch.cuda.synchronize()
    return out

  t0 = time.perf_counter()
  for _ in range(max(warmup, 1)):  # The first call of a torch.compile'd function compiles.
    sync(fn(*args))
  first = time.perf_counter() - t0
  times = _timed_loop(lambda: fn(*args), sync, repeats, min_seconds)
  peak = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
  return Timing(seconds=float(np.mean(times)), stdev=float(np.std(times)), repeats=len(times),
                compile_seconds=first, peak_bytes=peak)
