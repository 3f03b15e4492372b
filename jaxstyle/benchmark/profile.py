"""`jax.profiler` traces of benchmark cases, summarised per XLA operation.

`--profile_dir` makes the benchmark trace a few extra calls of every case after timing it (the
timed calls stay untraced) and report where the time went: the operations (XLA fusions, library
calls, GPU kernels) that took most of it, per call, the same grouped by kind (the name without
its instance number: `ynn_fusion.12` and `ynn_fusion.40` are both `ynn_fusion`) and by category
(convolution forward / input gradient / kernel gradient, matrix product, reduction, ...: `category`).
The trace itself stays in the directory for TensorBoard's profile plugin or Perfetto.
"""
import collections
import glob
import gzip
import json
import os
import re
from typing import Any, Callable, Dict, List

import jax

# Runtime scaffolding around the operations; their time is the operations' time again.
_WRAPPERS = re.compile(r"^\$|Thunk|Pjit|Execute|ParseArguments|Await|ThreadpoolListener|"
                       r"PjRt|Handle |Allocate|Wait for|CollectGarbage|CreateOutputs|^end: ")


# What kind of work an operation or kernel name is, first match wins (cuDNN, cuBLAS and XLA:GPU
# kernel names; XLA:CPU fusions and its YNNPACK/XNNPACK/oneDNN library calls).
_CATEGORIES = [(re.compile(p, re.IGNORECASE), label) for p, label in (
    (r"fprop|convfwd", "convolution forward"),
    (r"dgrad|convbwddata", "convolution input gradient"),
    (r"wgrad|convbwdfilter", "convolution kernel gradient"),
    (r"^(ynn|xnn|onednn)_", "CPU library call (convolutions, products)"),
    (r"conv(?!ert)|cudnn", "convolution, other"),
    (r"gemm|nvjet|matmul|cublas|^dot|triton", "matrix product"),
    (r"transpose", "transpose fusion"),
    (r"concatenate|^stack", "concatenate fusion"),  # XLA:CPU names jnp.stack's concatenate so
    (r"reduce|reduction", "reduction fusion"),
    (r"memcpy|memset|^copy", "copy / memset"),
    (r"fusion|^wrapped_", "elementwise / other fusion"),
)]


def category(name: str) -> str:
  """The kind of work an operation or kernel named `name` is (see `_CATEGORIES`)."""
  return next((label for pattern, label in _CATEGORIES if pattern.search(name)), "other")


def trace(call: Callable[[], Any], sync: Callable[[Any], Any], directory: str, calls: int) -> str:
  """Runs `calls` synced calls under `jax.profiler.trace`; returns the Perfetto trace file."""
  os.makedirs(directory, exist_ok=True)
  before = set(_trace_files(directory))
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    for _ in range(calls):
      sync(call())
  new = sorted(set(_trace_files(directory)) - before, key=os.path.getmtime)
  if not new:
    raise RuntimeError(f"jax.profiler wrote no trace under {directory}")
  return new[-1]


def _trace_files(directory: str) -> List[str]:
  return glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)


def _lines(events) -> Dict[tuple, str]:
  """{(pid, tid): 'process / thread'} from the trace's metadata events."""
  procs = {e["pid"]: e["args"].get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  return {(e["pid"], e["tid"]): f"{procs.get(e['pid'], e['pid'])} / {e['args'].get('name', '')}"
          for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}


def _kernel_lines(lines: Dict[tuple, str]) -> set:
  """The lines of device kernels, if the trace has any (GPU): each kernel is counted once there,
  not again as the host's launch and the device's 'XLA Ops' / 'XLA Modules' spans around it."""
  return {k for k, name in lines.items() if name.startswith("/device:") and "Stream" in name}


def summarize(trace_file: str, calls: int, top: int = 12) -> Dict[str, Any]:
  """Time per call of the traced operations (summed over threads and streams), largest first.

  Returns {'ops': [[name, ms_per_call, count_per_call], ...], 'kinds': [[kind, ms_per_call], ...],
  'total_ms': ..., 'lines': [[line, ms_per_call], ...]}: on a multi-threaded CPU the total exceeds
  the wall time by the parallelism. On a GPU only the device's kernels are counted.
  """
  with gzip.open(trace_file, "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  names = _lines(events)
  kernels = _kernel_lines(names)
  time_us, count, line_us = collections.Counter(), collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or "dur" not in e:
      continue
    where = (e.get("pid"), e.get("tid"))
    line_us[names.get(where, str(where))] += e["dur"]
    if (kernels and where not in kernels) or _WRAPPERS.search(e.get("name", "")):
      continue
    time_us[e["name"]] += e["dur"]
    count[e["name"]] += 1
  kinds, categories = collections.Counter(), collections.Counter()
  for name, us in time_us.items():
    kinds[re.sub(r"([._]\d+)+$", "", name)] += us
    categories[category(name)] += us
  per_call = lambda us: round(us / 1e3 / calls, 3)
  return {"ops": [[n, per_call(us), count[n] / calls] for n, us in time_us.most_common(top)],
          "kinds": [[k, per_call(us)] for k, us in kinds.most_common(top)],
          "categories": [[c, per_call(us)] for c, us in categories.most_common()],
          "total_ms": per_call(sum(time_us.values())),
          "launches": sum(count.values()) / calls,
          "lines": [[n, per_call(us)] for n, us in line_us.most_common(top)]}


def format_summary(case: str, summary: Dict[str, Any]) -> str:
  lines = [f"{case}: traced ops {summary['total_ms']:.1f} ms per call (all threads/streams), "
           f"{summary['launches']:.0f} operations per call"]
  lines += [f"  {ms:9.3f} ms  {label}" for label, ms in summary["categories"]]
  lines.append("  largest kinds:")
  lines += [f"  {ms:9.3f} ms  {kind[:110]}" for kind, ms in summary["kinds"]]
  return "\n".join(lines)
