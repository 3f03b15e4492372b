"""Benchmark output: a text table, JSON, a CSV beside it, and a throughput-vs-resolution chart."""
import csv
import json
import os
from typing import Callable, Dict, List, Optional

COLUMNS = ("case", "res", "batch", "dtype", "jaxstyle", "unit", "ms/img", "compile s", "GFLOP/s",
           "util", "torch eager", "torch compile", "x eager", "x compile", "check")


def _fmt(v, spec=".3g") -> str:
  if v is None:
    return "-"
  return format(v, spec)


def table_rows(report: dict) -> List[List[str]]:
  rows = []
  for r in report["results"]:
    if "error" in r:
      rows.append([r.get("case", "?"), str(r.get("resolution", "")), str(r.get("batch", "")),
                   "", "error (see JSON)"] + [""] * (len(COLUMNS) - 5))
      continue
    j = r["jax"]
    te, tc = r.get("torch_eager", {}), r.get("torch_compile", {})
    check = r.get("torch_check")
    rows.append([
        r["case"], str(r["resolution"]), str(r["batch"]), r["dtype"], _fmt(j["throughput"]),
        r["unit"], _fmt(j.get("ms_per_image"), ".1f"), _fmt(j["compile_seconds"], ".1f"),
        _fmt(j["flops_per_second"] and j["flops_per_second"] / 1e9, ".1f"),
        _fmt(j["utilisation"] and 100 * j["utilisation"], ".0f") + ("%" if j["utilisation"] else ""),
        _fmt(te.get("throughput")) if "error" not in te else "failed",
        _fmt(tc.get("throughput")) if "error" not in tc else "failed",
        _fmt(r.get("ratio_eager"), ".2f"), _fmt(r.get("ratio_compile"), ".2f"),
        "-" if check is None else ("ok" if check["ok"] else "DIFFERS")])
  return rows


def _host_memory(env: dict) -> str:
  mem = env.get("host_memory") or {}
  if not mem.get("retain"):
    text = "freed host memory returned to the OS"
  else:
    text = ("freed host memory retained" + (", one malloc arena" if mem.get("single_arena") else "")
            + " (both sides)")
  if env.get("platform") == "cpu" and mem.get("cpu_async_dispatch") is False:
    text += "; JAX calls run synchronously"
  return text


def format_table(report: dict) -> str:
  """A fixed-width table of the results plus the environment lines that qualify them."""
  rows = [list(COLUMNS)] + table_rows(report)
  widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  env = report["environment"]
  lines.append("")
  lines.append(f"device: {env['device']} ({env['platform']}), jax {env['jax']}, torch "
               f"{env['torch'] or 'not used'}; XLA CPU threads {env['cpu_threads']}, "
               f"torch.set_num_threads({env['torch_threads']}); {_host_memory(env)}")
  if env.get("platform") != "cpu" and env.get("gpu_reflect_padding") == "border":
    lines.append("reflection padding: convolved zero-padded with a border correction "
                 "(--gpu_reflect_padding=border)")
  if env.get("compilation_cache"):
    lines.append(f"compilation cache {env['compilation_cache']}: 'compile s' of a program compiled "
                 "in an earlier run is the time to load it")
  if "load_average" in env:
    lines.append(f"load average at start {env['load_average'][0]:.1f}, at end "
                 f"{env.get('load_average_end', [float('nan')])[0]:.1f}")
  if "speed_probe" in env:
    probe, end = env["speed_probe"], env.get("speed_probe_end", {})
    nan = float("nan")
    lines.append(f"speed probe: {probe['size']}^3 float32 matmul {probe['gflops']:.0f} GFLOP/s at "
                 f"start, {end.get('gflops', nan):.0f} at end; 128 MiB elementwise pass "
                 f"{probe['gbps']:.1f} GB/s at start, {end.get('gbps', nan):.1f} at end")
  lines.append("x eager / x compile: jaxstyle throughput / PyTorch throughput, timed in "
               "interleaved rounds of the same run (median per call)")
  notes = [(r["case"], "error: " + r["error"][:160]) for r in report["results"] if r.get("error")]
  notes += [(r["case"], r["torch_error"]) for r in report["results"] if r.get("torch_error")]
  notes += [(r["case"], f"torch {m}: {r[f'torch_{m}']['error']}") for r in report["results"]
            for m in ("eager", "compile") if "error" in r.get(f"torch_{m}", {})]
  for case, text in dict.fromkeys(notes):
    lines.append(f"  {case}: {text}")
  return "\n".join(lines)


def _flatten(d: dict, prefix: str = "") -> Dict[str, object]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "_"))
    elif isinstance(v, list) and v and isinstance(v[0], list):
      continue  # tables (a profile's top operations) stay in the JSON
    else:
      out[key] = v
  return out


def write(report: dict, json_path: str) -> List[str]:
  """Writes `json_path` and the CSV beside it (same name, .csv); returns the paths written."""
  parent = os.path.dirname(os.path.abspath(json_path))
  os.makedirs(parent, exist_ok=True)
  with open(json_path, "w") as f:
    json.dump(report, f, indent=2, default=str)
  csv_path = os.path.splitext(json_path)[0] + ".csv"
  flat = [_flatten(r) for r in report["results"]]
  fields = list(dict.fromkeys(k for row in flat for k in row))
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
  return [json_path, csv_path]


# --------------------------------------------------------------------------------------------------
# Chart


def _series(report: dict) -> Dict[str, List[tuple]]:
  """{label: [(resolution, throughput), ...]} for jaxstyle and each PyTorch mode."""
  series: Dict[str, List[tuple]] = {}
  for r in report["results"]:
    if "jax" not in r:
      continue
    base = f"{r['case']} b{r['batch']}"
    for label, col in (("jaxstyle", r["jax"]), ("torch eager", r.get("torch_eager")),
                       ("torch compile", r.get("torch_compile"))):
      if col and "throughput" in col:
        series.setdefault(f"{base} {label}", []).append((r["resolution"], col["throughput"]))
  return {k: sorted(v) for k, v in series.items()}


def plot(report: dict, path: str, log: Callable[[str], None] = print) -> Optional[str]:
  """Throughput vs resolution (log scale), with matplotlib if installed, else Pillow."""
  series = _series(report)
  if not series:
    log("plot: nothing to plot")
    return None
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return _plot_pillow(series, path)
  fig, ax = plt.subplots(figsize=(9, 6))
  for label, pts in series.items():
    style = "-" if label.endswith("jaxstyle") else ("--" if "eager" in label else ":")
    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=label)
  ax.set_xlabel("resolution (px)")
  ax.set_ylabel("throughput (images/s, steps/s or iters/s)")
  ax.set_yscale("log")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def _plot_pillow(series: Dict[str, List[tuple]], path: str) -> str:
  import math  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  w, h, left, top, bottom, legend = 900, 560, 70, 20, 50, 330
  img = Image.new("RGB", (w + legend, h), "white")
  d = ImageDraw.Draw(img)
  xs = sorted({p[0] for pts in series.values() for p in pts})
  ys = [p[1] for pts in series.values() for p in pts if p[1] > 0]
  lo, hi = math.log10(min(ys)), math.log10(max(ys))
  hi = hi if hi > lo else lo + 1
  xpos = lambda x: left + (xs.index(x) + 0.5) * (w - left - 20) / len(xs)
  ypos = lambda y: top + (hi - math.log10(y)) / (hi - lo) * (h - top - bottom)
  d.rectangle([left, top, w - 20, h - bottom], outline="black")
  for x in xs:
    d.text((xpos(x) - 10, h - bottom + 8), f"{x}px", fill="black")
  for k in range(math.floor(lo), math.ceil(hi) + 1):
    if lo <= k <= hi:
      d.text((5, ypos(10 ** k) - 6), f"1e{k}", fill="black")
  colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f"]
  for i, (label, pts) in enumerate(series.items()):
    color = colors[i % len(colors)]
    coords = [(xpos(x), ypos(y)) for x, y in pts if y > 0]
    if len(coords) > 1:
      d.line(coords, fill=color, width=1 if "torch" in label else 2)
    for cx, cy in coords:
      d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
    d.text((w + 5, top + 14 * i), label, fill=color)
  d.text((left, h - 20), "throughput (log scale) vs resolution", fill="black")
  img.save(path)
  return path
