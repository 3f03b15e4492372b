"""Checks a converted parameter tree against the exact VGG16/19 layout before anything uses it."""
from typing import Dict, Iterable, Optional

import numpy as np

from jaxstyle import vgg
from jaxstyle.data.folder import natural_key
from jaxstyle.errors import WeightsError

_MAX_NAMED = 6


def names(items: Iterable[str]) -> str:
  """Comma-joined names, shortened to keep error messages on one readable line."""
  items = sorted(items, key=natural_key)
  if len(items) > _MAX_NAMED:
    return ", ".join(items[:_MAX_NAMED]) + f", ... ({len(items)} in all)"
  return ", ".join(items)


def check_params(params: Dict[str, Dict[str, np.ndarray]], depth: int, source: str) -> dict:
  """Returns `params` as float32 NumPy arrays, or raises WeightsError naming every problem.

  Args:
    params: {'conv1_1': {'kernel': HWIO, 'bias': (C,)}, ...}.
    depth: 16 or 19.
    source: file name for the message.
  """
  if not isinstance(params, dict):
    raise WeightsError(
        f"{source}: expected a dict of VGG{depth} layers, got {type(params).__name__}")
  expected = vgg.param_shapes(depth)
  flat = {}
  for layer, sub in params.items():
    if isinstance(sub, dict):
      for leaf, value in sub.items():
        flat[f"{layer}/{leaf}"] = value
    else:
      flat[str(layer)] = sub
  want = {f"{layer}/{leaf}": shape
          for layer, sub in expected.items() for leaf, shape in sub.items()}
  require_exact(flat, want, source, f"VGG{depth}")
  return {layer: {leaf: np.asarray(flat[f"{layer}/{leaf}"], np.float32) for leaf in sub}
          for layer, sub in expected.items()}


def require_exact(found: Dict[str, object], want: Dict[str, tuple], source: str, what: str,
                  hint: Optional[str] = None):
  """Raises one WeightsError listing missing, extra and mis-shaped keys of `found` versus `want`."""
  problems = []
  missing = [k for k in want if k not in found]
  extra = [k for k in found if k not in want]
  if missing:
    problems.append(f"missing {names(missing)}")
  if extra:
    problems.append(f"unexpected {names(extra)}")
  shaped = []
  for key, shape in want.items():
    if key in found:
      got = _shape(found[key])
      if got != tuple(shape):
        shaped.append(f"{key} {got or 'ragged'} (expected {tuple(shape)})")
  if shaped:
    problems.append(f"wrong shape {names(shaped)}")
  bad = [k for k in want if k in found and not _is_finite_float(found[k])]
  if bad:
    problems.append(f"non-finite or non-float values in {names(bad)}")
  if problems:
    message = f"{source} does not hold {what} weights: " + "; ".join(problems)
    if hint:
      message += f" ({hint})"
    raise WeightsError(message)


def _shape(value) -> Optional[tuple]:
  """The array shape of `value`; None for nested lists that are not an array (ragged)."""
  try:
    return tuple(np.shape(value))
  except ValueError:
    return None


def _is_finite_float(value):
  try:
    arr = np.asarray(value)
  except ValueError:  # ragged
    return False
  return arr.dtype.kind == "f" and bool(np.isfinite(arr).all())
