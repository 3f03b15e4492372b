"""Training summaries: TensorBoard scalars/images, `metrics.jsonl`, and absl progress lines."""
import json
import math
import os
import time
from typing import Dict, List, Optional

from absl import logging
import numpy as np

SUMMARY_DIR = "summaries"
METRICS_FILE = "metrics.jsonl"


class Summaries:
  """Writes `workdir/summaries` (tensorboardX) and appends to `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str, enabled: bool = True):
    self._writer = None
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(os.path.join(workdir, SUMMARY_DIR))
      self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")

  def scalars(self, step: int, values: Dict[str, float]) -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(name, value, step)
    row = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def images(self, step: int, name: str, images) -> None:
    """`images`: [B, H, W, 3] in [0, 1] (clipped; non-finite pixels shown black)."""
    if self._writer is None:
      return
    images = np.nan_to_num(np.asarray(images, np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    self._writer.add_images(name, np.clip(images, 0.0, 1.0), step, dataformats="NHWC")

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._jsonl.close()
      self._writer = self._jsonl = None


class Meter:
  """Averages per-step metrics between log lines and measures throughput.

  Metrics stay on the device until `summarize` (one transfer per log line, not one per step).
  """

  def __init__(self, batch_size: int):
    self._batch_size = batch_size
    self._pending: List[dict] = []
    self._since = time.perf_counter()

  def add(self, metrics: dict) -> None:
    self._pending.append(metrics)

  def restart_clock(self) -> None:
    self._since = time.perf_counter()

  def summarize(self) -> Optional[Dict[str, float]]:
    if not self._pending:
      return None
    import jax  # pylint: disable=g-import-not-at-top
    rows = jax.device_get(self._pending)
    elapsed = max(time.perf_counter() - self._since, 1e-9)
    out = {}
    for key in rows[0]:
      values = np.array([float(r[key]) for r in rows], np.float64)
      if key == "nonfinite":
        out[key] = float(values.sum())
      else:  # skipped steps report NaN losses; the average is over the steps that counted
        finite = values[np.isfinite(values)]
        out[key] = float(finite.mean()) if finite.size else float("nan")
    out["steps_per_sec"] = len(rows) / elapsed
    out["images_per_sec"] = out["steps_per_sec"] * self._batch_size
    self._pending = []
    self._since = time.perf_counter()
    return out


def log_line(step: int, total: int, values: Dict[str, float]) -> None:
  extras = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())
                    if k not in ("loss", "steps_per_sec", "images_per_sec", "nonfinite"))
  skipped = f" skipped={int(values['nonfinite'])}" if values.get("nonfinite") else ""
  logging.info("step %d/%d loss=%.5g %.2f steps/s %.1f images/s%s %s", step, total,
               values.get("loss", float("nan")), values["steps_per_sec"], values["images_per_sec"],
               skipped, extras)
