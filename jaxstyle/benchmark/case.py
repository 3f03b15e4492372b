"""What one benchmark measurement is: a JAX computation, its work per call, and its PyTorch twin."""
import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

KINDS = ("inference", "train", "optim")
# The unit each kind's throughput is counted in.
UNITS = {"inference": "images/s", "train": "steps/s", "optim": "iters/s"}


@dataclasses.dataclass
class TorchTwin:
  """A PyTorch implementation of a case, loaded with the same weights.

  Attributes:
    make_fn: `make_fn(compiled: bool) -> callable()` returning a fresh callable that runs one call
      (inference under `torch.no_grad`, or one optimiser iteration); `compiled` wraps the model
      in `torch.compile`.
    check: `check(jax_reference) -> (max_abs_err, tolerance)`: runs the eager twin once and
      compares with the JAX reference (from `Case.reference`).
  """
  make_fn: Callable[[bool], Callable[[], Any]]
  check: Callable[[Any], Tuple[float, float]]


@dataclasses.dataclass
class Case:
  """One JAX computation to time.

  Attributes:
    method: jaxstyle method name.
    kind: 'inference' (feed-forward stylization), 'train' (one train step of the method's trainer)
      or 'optim' (one optimiser iteration on the image: loss + grad + update).
    variant: sub-case label ('adam', 'lbfgs', ...; '' when there is one).
    fn: the function to jit; `fn(*args)`.
    args: its arguments (parameters travel as arguments, never closed over).
    batch: images per call.
    donate_argnums: donated arguments (the carried state of train steps and iterations).
    carry: feed the first output back as the first argument (train states, optimiser carries).
    reference: `reference(outputs) -> value` extracting what the torch twin must reproduce from
      the outputs of one JAX call on `fresh_args()`.
    fresh_args: new arguments for that checking call (donation consumes the timing ones).
    torch: optional factory `() -> TorchTwin` (built only when torch timing is requested).
    note: free text shown in the JSON.
    compiler_options: XLA options of the library's own jit of this computation on the CPU
      (`xla_options.jit`'s `cpu_options`), so that the benchmark compiles what the library runs.
  """
  method: str
  kind: str
  variant: str
  fn: Callable
  args: Tuple[Any, ...]
  batch: int
  donate_argnums: Tuple[int, ...] = ()
  carry: bool = False
  reference: Optional[Callable[[Any], Any]] = None
  fresh_args: Optional[Callable[[], Tuple[Any, ...]]] = None
  torch: Optional[Callable[[], TorchTwin]] = None
  note: str = ""
  compiler_options: Optional[Dict[str, str]] = None

  @property
  def name(self) -> str:
    return f"{self.method}/{self.kind}" + (f"/{self.variant}" if self.variant else "")

  def throughput(self, seconds: float) -> float:
    """Calls per second in the kind's unit: images/s (inference) or steps/iterations per second."""
    return (self.batch if self.kind == "inference" else 1.0) / seconds


def max_abs_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def tolerance(reference, dtype: str, rel: float = 1e-3) -> float:
  """Absolute tolerance scaled by the reference's magnitude (bf16 keeps ~3 significant digits)."""
  scale = float(np.max(np.abs(np.asarray(reference, np.float32)))) or 1.0
  return (5e-2 if dtype == "bfloat16" else rel) * scale + 1e-6
