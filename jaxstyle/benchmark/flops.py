"""Model FLOPs of a traced program: its convolutions and matrix products, counted from the jaxpr.

XLA's own cost analysis cannot be the utilisation numerator on GPUs: there the compiled module's
convolutions are cuDNN custom calls, which the analysis counts as zero (an H200 MSG-Net train step
at 256 px, batch 16, read 64 GFLOP per step, ~25x too few). The jaxpr still holds every
convolution and `dot_general` with its shapes, on every backend, forward and backward (a train
step's jaxpr contains its gradient), so counting there gives the usual model-FLOPs figure (one
multiply-add = 2 FLOPs; elementwise work, normalisation and reductions are not counted).

What is counted is the program as traced: where jaxstyle picks a backend-specific algorithm at
trace time (Winograd convolutions on CPU) the count is that algorithm's matrix products.
"""
import math
from typing import Any, Iterator

import jax


def _subjaxprs(params: dict) -> Iterator[Any]:
  """The jaxprs nested in an equation's params (pjit, custom_vjp/jvp, remat, scan, cond...)."""
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(getattr(item, "jaxpr", None), "eqns"):
        yield item.jaxpr


def _conv_flops(eqn) -> float:
  """2 x output elements x taps per output (kernel input features x kernel window).

  Holds for grouped convolutions (the kernel's input-feature dim is already per group) and for
  the kernel-gradient convolutions of a backward pass. Input dilation (the input gradient of a
  strided convolution) inserts zeros that no real multiply touches, so those taps are left out.
  """
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
  taps = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
  dilation = math.prod(eqn.params.get("lhs_dilation") or (1,))
  return 2.0 * math.prod(out) * taps / dilation


def _dot_flops(eqn) -> float:
  """2 x output elements x the product of the contracted dimensions."""
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def count_jaxpr(jaxpr) -> float:
  """FLOPs of the convolutions and dot_generals in `jaxpr` (a Jaxpr or ClosedJaxpr)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "cond":  # One branch runs: count the dearest.
      total += max((count_jaxpr(b) for b in eqn.params["branches"]), default=0.0)
    else:
      # A scan body runs `length` times; a while body's trip count is unknown and counted once.
      repeat = eqn.params.get("length", 1) if name == "scan" else 1
      total += repeat * sum(count_jaxpr(sub) for sub in _subjaxprs(eqn.params))
  return total


def count(fn, *args) -> float:
  """Model FLOPs of one call `fn(*args)` (traced, not run)."""
  return count_jaxpr(jax.make_jaxpr(fn)(*args))
