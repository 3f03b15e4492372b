r"""Measures XLA throughput of every jaxstyle method, with equivalent PyTorch models side by side.

  python launch/benchmark.py                                   # all methods, 256 px, batch 1
  python launch/benchmark.py --methods=gatys,johnson --resolutions=128,256 --torch=eager,compile
  python launch/benchmark.py --methods=msgnet,adain --kinds=train --batch_sizes=16 \
      --dtype=bfloat16 --torch=none --output=out/bench_gpu.json --plot=out/bench_gpu.png

Per method: inference images/s (feed-forward methods), train-step steps/s (each trainer's real
`train_step`, state donated), optimisation iterations/s (gatys/histogram: loss + grad + update),
compile time, XLA's FLOP count and utilisation where the device peak is known. PyTorch twins
(same architecture, same weights, checked equal first) are timed eager and with torch.compile.
Writes a table to stdout, --output JSON with a CSV beside it, and --plot if given.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from jaxstyle import api  # noqa: E402
from jaxstyle.benchmark import case as case_lib  # noqa: E402
from jaxstyle.benchmark import report as report_lib  # noqa: E402
from jaxstyle.benchmark import runner  # noqa: E402
from jaxstyle.errors import ConfigError  # noqa: E402
from launch import common  # noqa: E402

_METHODS = flags.DEFINE_list("methods", list(api.METHODS), "Methods to benchmark.")
_RESOLUTIONS = flags.DEFINE_list("resolutions", ["256"], "Square image sides in pixels.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1"], "Images per inference call / train step.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(runner.DTYPES),
                           "Compute dtype of the feed-forward models (optimisation stays float32).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per column.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compiling.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved JAX/PyTorch timing rounds.")
_TORCH = flags.DEFINE_list("torch", ["eager", "compile"],
                           "PyTorch modes to time side by side: eager, compile, or none.")
_KINDS = flags.DEFINE_list("kinds", list(case_lib.KINDS), "What to time: inference,train,optim.")
_OPTIMIZERS = flags.DEFINE_list("optimizers", ["adam", "lbfgs"],
                                "Optimisers of the gatys/histogram iterations.")
_CASES = flags.DEFINE_list("cases", [], "Only these cases, e.g. johnson/train,magenta/inference "
                          "(default: every case of --methods and --kinds).")
_WIDTH = flags.DEFINE_float("width", 1.0, "Channel multiplier of the feed-forward networks and the "
                            "VGG16 loss net (1 = default architectures; smaller for smoke tests).")
_OUTPUT = flags.DEFINE_string("output", "out/benchmark.json", "JSON report (a .csv goes beside it).")
_PLOT = flags.DEFINE_string("plot", None, "PNG chart of throughput vs resolution (optional).")
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "Trace --profile_calls more JAX calls of every case with jax.profiler "
    "into this directory (after timing) and log/report the operations that took the time.")
_PROFILE_CALLS = flags.DEFINE_integer("profile_calls", 3, "Calls traced per case (--profile_dir).")
_CPU_PROGRAM_OPTIONS = flags.DEFINE_bool(
    "cpu_program_options", True, "Compile the cases whose library functions pass XLA options on "
    "the CPU (jaxstyle.xla_options: Johnson, AdaIN and Magenta inference) with them, as the "
    "library does; --nocpu_program_options times them without (before/after).")


def _ints(name, values):
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ConfigError(f"--{name} must be integers, got {','.join(values)}") from None


def build_config() -> runner.BenchmarkConfig:
  torch_modes = tuple(m for m in _TORCH.value if m != "none")
  if "none" in _TORCH.value and torch_modes:
    raise ConfigError("--torch=none cannot be combined with other modes")
  return runner.BenchmarkConfig(
      methods=tuple(_METHODS.value), resolutions=_ints("resolutions", _RESOLUTIONS.value),
      batch_sizes=_ints("batch_sizes", _BATCH_SIZES.value), dtype=_DTYPE.value,
      repeats=_REPEATS.value, warmup=_WARMUP.value, rounds=_ROUNDS.value, torch_modes=torch_modes,
      kinds=tuple(_KINDS.value), optimizers=tuple(_OPTIMIZERS.value),
      cases=tuple(_CASES.value), width=_WIDTH.value, profile_dir=_PROFILE_DIR.value,
      profile_calls=_PROFILE_CALLS.value,
      cpu_program_options=_CPU_PROGRAM_OPTIONS.value).validate()


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  output = common.check_output_path(_OUTPUT.value, overwrite=True, suffixes=(".json",))
  plot_path = None
  if _PLOT.value:
    plot_path = common.check_output_path(_PLOT.value, overwrite=True, suffixes=(".png",))
  config = build_config()
  report = runner.run(config, log=lambda msg: print(msg, file=sys.stderr, flush=True))
  print(report_lib.format_table(report))
  for path in report_lib.write(report, output):
    print(f"wrote {path}")
  if plot_path and report_lib.plot(report, plot_path):
    print(f"wrote {plot_path}")


if __name__ == "__main__":
  common.run(main)
