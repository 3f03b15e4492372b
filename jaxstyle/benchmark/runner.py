"""Runs the benchmark cases and their PyTorch twins side by side; returns one JSON-able report.

JAX and PyTorch are timed in interleaved rounds (JAX, eager, compiled, JAX, ...), so that on a
shared, loaded machine all columns of a row see the same load; each column's number is the median
over all its timed calls. Ratios are jaxstyle throughput / PyTorch throughput (above 1 = jaxstyle
faster).
"""
import dataclasses
import importlib.util
import math
import os
import platform
import sys
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxstyle import api
from jaxstyle import compile_cache
from jaxstyle import hostmem
from jaxstyle import xla_options
from jaxstyle.benchmark import harness
from jaxstyle.benchmark import model_cases
from jaxstyle.benchmark import optim_cases
from jaxstyle.benchmark import profile
from jaxstyle.benchmark.case import KINDS, UNITS, Case
from jaxstyle.errors import ConfigError
from jaxstyle.nn import reflect_conv

DTYPES = ("float32", "bfloat16")
TORCH_MODES = ("eager", "compile")


@dataclasses.dataclass
class BenchmarkConfig:
  """What to measure.

  Attributes:
    methods: jaxstyle method names (default: all).
    resolutions: square image sides in pixels.
    batch_sizes: images per call of inference and train steps (optimisation iterations use 1).
    dtype: model compute dtype of the feed-forward methods ('float32' or 'bfloat16').
    repeats: timed calls per column (split over `rounds`).
    warmup: untimed calls before the first round.
    rounds: interleaved timing rounds of JAX and PyTorch.
    torch_modes: subset of ('eager', 'compile'); empty = JAX only.
    kinds: subset of ('inference', 'train', 'optim').
    optimizers: optimisers timed for the optimisation methods ('adam', 'lbfgs').
    cases: only these cases, by name ('johnson/train', 'gatys/optim/adam', ...); empty = all.
    width: channel multiplier of the feed-forward networks and their VGG16 loss network (1 = the
      methods' default architectures; smaller only for smoke tests).
    profile_dir: if set, trace `profile_calls` more JAX calls of every case there (after timing)
      and add a per-operation summary to its row (`profile.summarize`).
    profile_calls: calls per profiled case.
    cpu_program_options: compile the cases whose library functions pass XLA options on the CPU
      (`jaxstyle.xla_options`) with them, as the library does; False times them without.
  """
  methods: Sequence[str] = tuple(api.METHODS)
  resolutions: Sequence[int] = (256,)
  batch_sizes: Sequence[int] = (1,)
  dtype: str = "float32"
  repeats: int = 10
  warmup: int = 2
  rounds: int = 3
  torch_modes: Sequence[str] = TORCH_MODES
  kinds: Sequence[str] = KINDS
  optimizers: Sequence[str] = optim_cases.OPTIMIZERS
  cases: Sequence[str] = ()
  width: float = 1.0
  profile_dir: Optional[str] = None
  profile_calls: int = 3
  cpu_program_options: bool = True

  def validate(self) -> "BenchmarkConfig":
    for m in self.methods:
      if m not in api.METHODS:
        raise ConfigError(f"unknown method {m!r}; choose from {', '.join(api.METHODS)}")
    if not self.methods:
      raise ConfigError("no methods to benchmark")
    for name, values in (("resolutions", self.resolutions), ("batch_sizes", self.batch_sizes)):
      if not values or any(int(v) <= 0 for v in values):
        raise ConfigError(f"--{name} must be positive integers, got {list(values)}")
    if any(int(r) % 16 for r in self.resolutions):
      raise ConfigError(f"--resolutions must be multiples of 16 (VGG relu5_1 and the 4x down/up "
                        f"sampling networks), got {list(self.resolutions)}")
    if self.dtype not in DTYPES:
      raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
    for name in self.cases:
      parts = name.split("/")
      if len(parts) not in (2, 3) or parts[0] not in api.METHODS or parts[1] not in KINDS:
        raise ConfigError(f"--cases takes method/kind[/variant] names such as johnson/train, "
                          f"got {name!r}")
    if not self.width > 0:
      raise ConfigError(f"--width must be positive, got {self.width}")
    if self.repeats < 1 or self.warmup < 0 or self.rounds < 1 or self.profile_calls < 1:
      raise ConfigError("--repeats, --rounds and --profile_calls must be >= 1 and --warmup >= 0")
    for mode in self.torch_modes:
      if mode not in TORCH_MODES:
        raise ConfigError(f"--torch takes eager,compile or none, got {mode!r}")
    for kind in self.kinds:
      if kind not in KINDS:
        raise ConfigError(f"--kinds takes {', '.join(KINDS)}, got {kind!r}")
    for opt in self.optimizers:
      if opt not in optim_cases.OPTIMIZERS:
        raise ConfigError(f"--optimizers takes {', '.join(optim_cases.OPTIMIZERS)}, got {opt!r}")
    return self


def build_cases(method: str, size: int, batch: int, config: BenchmarkConfig) -> List[Case]:
  """The cases of one method at one size and batch (optimisation methods: batch 1 only)."""
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
  wanted = lambda name: not config.cases or any(
      name == c or name.startswith(c + "/") for c in config.cases)
  if method in optim_cases.OPTIMIZATION:
    if "optim" not in config.kinds or batch != min(config.batch_sizes):
      return []
    build = optim_cases.gatys_cases if method == "gatys" else optim_cases.histogram_cases
    return [c for c in build(size, dtype, config.optimizers) if wanted(c.name)]
  kinds = [k for k in config.kinds if k != "optim" and wanted(f"{method}/{k}")]
  return model_cases.BUILDERS[method](size, batch, dtype, kinds, config.width) if kinds else []


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _timing_dict(t: harness.Timing, case: Case) -> dict:
  return {"throughput": case.throughput(t.seconds), "seconds": t.seconds, "mean_seconds": t.mean,
          "stdev_seconds": t.stdev, "calls": t.repeats, "first_call_seconds": t.compile_seconds,
          "page_faults_per_call": t.page_faults, "system_seconds_per_call": t.system_seconds}


def _torch_benches(case: Case, twin, reference, row: dict, modes) -> Dict[str, harness.TorchBench]:
  """Checks the twin against the JAX reference, then warms up (compiles) each requested mode."""
  err, tol = twin.check(reference)
  row["torch_check"] = {"max_err": err, "tolerance": tol, "ok": bool(err <= tol)}
  if not err <= tol:
    row["torch_error"] = f"PyTorch twin differs from JAX (error {err:.3g} > {tol:.3g}): not timed"
    return {}
  benches = {}
  for mode in modes:
    try:
      bench = harness.TorchBench(twin.make_fn(mode == "compile"))
      bench.run(0)  # the first call: torch.compile compiles here
      benches[mode] = bench
    except Exception as e:  # pylint: disable=broad-except  # Reported per case, never fatal.
      row[f"torch_{mode}"] = {"error": _first_line(e)}
  return benches


def run_case(case: Case, config: BenchmarkConfig, size: int, log: Callable[[str], None]) -> dict:
  """Times one case (and its PyTorch twin); errors end up in the row, never raised."""
  row = {"case": case.name, "method": case.method, "kind": case.kind, "variant": case.variant,
         "resolution": size, "batch": case.batch, "unit": UNITS[case.kind],
         "dtype": "float32" if case.kind == "optim" else config.dtype, "note": case.note}
  log(f"{case.name} {size}px batch {case.batch}: compiling")
  try:
    options = xla_options.for_cpu(case.compiler_options) if config.cpu_program_options else None
    if options:
      row["compiler_options"] = options
    bench = harness.JaxBench(case.fn, case.args, donate_argnums=case.donate_argnums,
                             carry=case.carry, compiler_options=options)
  except Exception as e:  # pylint: disable=broad-except
    row["error"] = _first_line(e)
    return row
  torch_benches = {}
  if config.torch_modes and case.torch is not None:
    try:
      reference = case.reference(jax.block_until_ready(bench.compiled(*case.fresh_args())))
      torch_benches = _torch_benches(case, case.torch(), reference, row, config.torch_modes)
    except Exception as e:  # pylint: disable=broad-except
      row["torch_error"] = _first_line(e)
  elif config.torch_modes:
    row["torch_error"] = "no PyTorch twin for this case"

  per_round = max(1, math.ceil(config.repeats / config.rounds))
  for r in range(config.rounds):
    try:
      bench.run(per_round, config.warmup if r == 0 else 0)
    except Exception as e:  # pylint: disable=broad-except
      row["error"] = _first_line(e)
      return row
    for mode, tb in list(torch_benches.items()):
      try:
        tb.run(per_round, config.warmup if r == 0 else 0)
      except Exception as e:  # pylint: disable=broad-except
        row[f"torch_{mode}"] = {"error": _first_line(e)}
        del torch_benches[mode]

  t = bench.timing()
  jax_row = _timing_dict(t, case)
  jax_row.update(compile_seconds=t.compile_seconds, flops=t.flops, xla_flops=t.xla_flops,
                 flops_per_second=t.flops_per_second, peak_bytes=t.peak_bytes,
                 xla_bytes=t.xla_bytes)
  if case.kind == "inference":
    jax_row["ms_per_image"] = 1e3 * t.seconds / case.batch
  else:
    jax_row["images_per_second"] = case.batch / t.seconds
  peak = harness.device_peak_flops(row["dtype"])
  jax_row["utilisation"] = t.flops_per_second / peak if peak and t.flops_per_second else None
  row["jax"] = jax_row
  for mode, tb in torch_benches.items():
    tt = tb.timing()
    row[f"torch_{mode}"] = _timing_dict(tt, case)
    row[f"ratio_{mode}"] = tt.seconds / t.seconds
  log(f"{case.name} {size}px batch {case.batch}: {jax_row['throughput']:.3g} {row['unit']}")
  if config.profile_dir:
    _profile(bench, case, config, size, row, log)
  return row


def _profile(bench: harness.JaxBench, case: Case, config: BenchmarkConfig, size: int, row: dict,
             log: Callable[[str], None]):
  name = f"{case.name.replace('/', '_')}_{size}px_b{case.batch}_{row['dtype']}"
  try:
    path = profile.trace(bench.call, jax.block_until_ready,
                         os.path.join(config.profile_dir, name), config.profile_calls)
    summary = profile.summarize(path, config.profile_calls)
  except Exception as e:  # pylint: disable=broad-except  # a profile is extra: keep the timings
    row["profile"] = {"error": _first_line(e)}
    return
  row["profile"] = dict(summary, trace=path)
  log(profile.format_summary(case.name, summary))


def environment(config: BenchmarkConfig, torch_threads: Optional[int]) -> dict:
  dev = jax.devices()[0]
  env = {"python": sys.version.split()[0], "jax": jax.__version__, "platform": dev.platform,
         "device": dev.device_kind, "num_devices": jax.device_count(),
         "machine": platform.machine(), "cpu_threads": hostmem.cpu_threads(),
         "xla_flags": os.environ.get("XLA_FLAGS", ""), "torch": None,
         "torch_threads": torch_threads, "host_memory": hostmem.settings(),
         "compilation_cache": compile_cache.directory(),
         "gpu_reflect_padding": reflect_conv.mode(),
         "config": dataclasses.asdict(config)}
  if hasattr(os, "getloadavg"):
    env["load_average"] = list(os.getloadavg())
  env["speed_probe"] = harness.speed_probe()
  if config.torch_modes:
    import torch  # pylint: disable=g-import-not-at-top
    env["torch"] = torch.__version__
  return env


def torch_available() -> bool:
  return importlib.util.find_spec("torch") is not None


def run(config: BenchmarkConfig, log: Callable[[str], None] = print) -> dict:
  """Runs every case of `config`; returns {'environment': ..., 'results': [row, ...]}."""
  config.validate()
  torch_threads = None
  if config.torch_modes:
    if not torch_available():
      log("PyTorch is not installed: timing jaxstyle only")
      config = dataclasses.replace(config, torch_modes=())
    else:
      import torch  # pylint: disable=g-import-not-at-top
      # Same thread count as XLA's CPU thread pool, so that neither side gets more cores.
      torch_threads = hostmem.cpu_threads()
      torch.set_num_threads(torch_threads)
  report = {"environment": environment(config, torch_threads), "results": []}
  for method in config.methods:
    for size in config.resolutions:
      for batch in config.batch_sizes:
        try:
          cases = build_cases(method, int(size), int(batch), config)
        except Exception as e:  # pylint: disable=broad-except  # e.g. a method still landing
          report["results"].append({"case": method, "method": method, "resolution": size,
                                    "batch": batch, "error": _first_line(e)})
          continue
        for case in cases:
          report["results"].append(run_case(case, config, int(size), log))
  if hasattr(os, "getloadavg"):
    report["environment"]["load_average_end"] = list(os.getloadavg())
  report["environment"]["speed_probe_end"] = harness.speed_probe()
  return report
