"""PyTorch twins of the optimisation iterations (Gatys, histogram losses): each reproduces the
loss and image gradient of one jaxstyle Adam iteration, and a wrong reference is caught."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from jaxstyle.benchmark import optim_cases  # noqa: E402
from jaxstyle.benchmark import torch_cases  # noqa: E402
from jaxstyle.losses import histogram as histogram_lib  # noqa: E402


def _case(method):
  (case,) = getattr(optim_cases, f"{method}_cases")(32, "float32", ["adam"])
  return case


@pytest.mark.parametrize("method", ["gatys", "histogram"])
def test_optim_twin_matches_one_jax_iteration(method):
  case = _case(method)
  reference = case.reference(jax.jit(case.fn)(*case.fresh_args()))
  loss, grad = reference
  assert loss > 0 and np.abs(grad).max() > 0
  twin = case.torch()
  err, tol = twin.check(reference)
  assert err <= tol, (err, tol)
  # A 1% change of the loss or of the gradient is caught.
  assert twin.check((loss * 1.01, grad))[0] > tol
  assert twin.check((loss, grad * 1.01))[0] > tol
  # The timed callable runs iterations (Adam moves the image, the loss falls).
  call = twin.make_fn(False)
  first = float(call())
  for _ in range(3):
    last = float(call())
  assert last < first


def test_histogram_twin_includes_the_histogram_term(monkeypatch):
  # Without its histogram term the twin's loss would be the Gatys part only: the check must fail.
  case = _case("histogram")
  reference = case.reference(jax.jit(case.fn)(*case.fresh_args()))
  assert case.args[1]["hists"] and reference[0] > 0
  monkeypatch.setattr(torch_cases, "histogram_match_sorted",
                      lambda f, *unused: f.detach())  # the histogram term becomes 0
  err, tol = case.torch().check(reference)
  assert err > tol


def test_torch_histogram_match_equals_jax(rng):
  f = rng.standard_normal((1, 7, 9, 5)).astype(np.float32)
  f[..., 0] = np.maximum(f[..., 0], 0)  # ties (ReLU zeros): both sorts are stable
  target = (2.0 * rng.standard_normal((1, 6, 8, 5)) + 1.0).astype(np.float32)
  want = histogram_lib.histogram_match(f, target)
  tgt = histogram_lib.histogram_target(target)
  got = torch_cases.histogram_match_sorted(
      torch.from_numpy(f).permute(0, 3, 1, 2),
      torch.from_numpy(np.asarray(tgt.sorted_values)), float(tgt.count[0]))
  np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), want, rtol=1e-6, atol=1e-6)
