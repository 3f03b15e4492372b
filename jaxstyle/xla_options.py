"""XLA compiler options for single programs, applied only when they compile for the CPU.

XLA:CPU (jax 0.10) hands every dot and convolution to YNNPACK. For the 16 small tile products of
each Winograd convolution in the feed-forward networks (`nn.winograd`; `[256, 128] x [128, 128]`
for Johnson's residual blocks at 128 px) XLA's own dot kernels are faster (1.23 against 1.79 ms
for 16 such products on the 2-core development machine); for deep products (Gram matrices,
512-channel layers, MSG-Net's bottlenecks) YNNPACK is. XLA decides per program, not per product,
so `SMALL_DOTS` (only convolutions in YNNPACK) is passed by the programs that measured faster with
it (docs/benchmarks.md, "Per-program XLA options"). `RUN_ONCE` (no LLVM optimisation) is for
programs that run once, such as the trainers' initialisation (`train.loop.init_leaves`).
"""
import functools
from typing import Any, Callable, Dict, Mapping, Optional

from absl import logging
import jax
import numpy as np

SMALL_DOTS: Dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}

# Programs that run once (trainers' initialisation: random parameters, a style's Grams): LLVM's
# optimisation of their elementwise code costs more compile time than it could save (TSPR's
# init, ~100 small random-number kernels: 9.3 -> 2.1 s). Convolutions and dots are library calls
# either way.
RUN_ONCE: Dict[str, Any] = {"xla_backend_optimization_level": 0}

_enabled = True


def set_enabled(enabled: bool) -> None:
  """Turns the CPU options of `jit` functions on or off (to compare, or to rule them out).

  Takes effect at their next call: each keeps one compiled program per option set.
  """
  global _enabled
  _enabled = bool(enabled)


@functools.lru_cache(maxsize=None)
def _accepted(items) -> bool:
  """Whether this XLA knows the options (a jaxlib without them rejects the whole compile)."""
  try:
    jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(compiler_options=dict(items))
    return True
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("XLA rejected the CPU options %s (%s); compiling without them",
                    dict(items), str(e).splitlines()[0] if str(e) else type(e).__name__)
    return False


def for_cpu(options: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
  """`options` when enabled, the default backend is the CPU and its XLA accepts them; else None."""
  if not options or not _enabled or jax.default_backend() != "cpu":
    return None
  return dict(options) if _accepted(tuple(sorted(options.items()))) else None


def jit(fun: Optional[Callable] = None, *, cpu_options: Mapping[str, Any], **jit_kwargs):
  """`jax.jit(fun, **jit_kwargs)`, compiled with `cpu_options` when it runs on the CPU backend.

  The backend is looked up at call time (not at import, which would initialise JAX before a user
  can pick a platform); one `jax.jit` per distinct option set is kept, and `.current()` returns
  the one a call would use now (for `.lower(...)`). Usable as a decorator:
  `@functools.partial(xla_options.jit, cpu_options=SMALL_DOTS, static_argnames=...)`.
  """
  if fun is None:
    return functools.partial(jit, cpu_options=cpu_options, **jit_kwargs)
  variants: Dict[Any, Callable] = {}

  def current():
    options = for_cpu(cpu_options)
    key = None if options is None else tuple(sorted(options.items()))
    if key not in variants:
      variants[key] = jax.jit(fun, compiler_options=options, **jit_kwargs)
    return variants[key]

  @functools.wraps(fun)
  def call(*args, **kwargs):
    return current()(*args, **kwargs)

  call.current = current
  return call
