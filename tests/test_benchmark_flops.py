"""Model FLOPs counted from the jaxpr: hand counts for each layer kind, XLA's count on CPU for a
backward pass, control flow, and the benchmark's use of it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle.benchmark import flops
from jaxstyle.benchmark import harness

DN = ("NHWC", "HWIO", "NHWC")


def _net(x, w1, w2, w3, d):
  y = jax.nn.relu(jax.lax.conv_general_dilated(x, w1, (1, 1), "VALID", dimension_numbers=DN))
  y = jax.lax.conv_general_dilated(y, w2, (2, 2), "VALID", dimension_numbers=DN)
  y = jax.lax.conv_general_dilated(y, w3, (1, 1), "VALID", dimension_numbers=DN,
                                   feature_group_count=4)
  return jnp.sum((y.reshape(y.shape[0], -1) @ d) ** 2)


def _args():
  shapes = [(2, 34, 34, 8), (3, 3, 8, 16), (3, 3, 16, 32), (3, 3, 8, 32), (13 * 13 * 32, 10)]
  keys = jax.random.split(jax.random.key(0), len(shapes))
  return [jax.random.normal(k, s) for k, s in zip(keys, shapes)]


def _hand_count():
  """2 x multiply-adds: plain 3x3, strided 3x3, 4-group 3x3 (8 inputs per group), dense."""
  return (2 * (2 * 32 * 32 * 16) * 9 * 8 + 2 * (2 * 15 * 15 * 32) * 9 * 16
          + 2 * (2 * 13 * 13 * 32) * 9 * 8 + 2 * (2 * 10) * (13 * 13 * 32))


def test_forward_matches_hand_count_and_xla():
  args = _args()
  assert flops.count(_net, *args) == _hand_count()
  # XLA's CPU analysis also counts the elementwise work: a little more, never less.
  xla = jax.jit(_net).lower(*args).compile().cost_analysis()["flops"]
  assert _hand_count() <= xla <= 1.01 * _hand_count()


def test_backward_pass_is_counted_like_xla_does():
  grad = jax.grad(_net, argnums=(0, 1, 2, 3, 4))
  args = _args()
  counted = flops.count(grad, *args)
  xla = jax.jit(grad).lower(*args).compile().cost_analysis()["flops"]
  # Forward + input gradients + kernel gradients: about 3x the forward pass.
  assert counted == pytest.approx(xla, rel=0.06)
  assert counted == pytest.approx(3 * _hand_count(), rel=0.06)


def test_input_dilation_zeros_are_not_counted():
  x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
  dense = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN)
  dilated = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), ((0, 0), (0, 0)), lhs_dilation=(2, 2), dimension_numbers=DN)
  assert flops.count(dense, x, w) == 2 * (6 * 6 * 4) * 9 * 4
  assert flops.count(dilated, x, w) == 2 * (13 * 13 * 4) * 9 * 4 / 4


def test_nested_jit_scan_and_cond():
  a = jnp.ones((8, 8))
  matmul = 2 * 8 * 8 * 8
  assert flops.count(jax.jit(lambda x: x @ x), a) == matmul
  scanned = lambda x: jax.lax.scan(lambda c, _: (c @ c, None), x, None, length=5)[0]
  assert flops.count(scanned, a) == 5 * matmul
  branchy = lambda p, x: jax.lax.cond(p, lambda y: y @ y @ y, lambda y: y + 1, x)
  assert flops.count(branchy, True, a) == 2 * matmul
  assert flops.count(jax.checkpoint(lambda x: x @ x), a) == matmul


def test_jax_bench_reports_model_and_xla_flops():
  args = _args()
  timing = harness.time_jax(_net, args, repeats=1, warmup=0)
  assert timing.flops == _hand_count()
  assert timing.xla_flops >= timing.flops
  assert timing.flops_per_second == pytest.approx(timing.flops / timing.seconds)
  np.testing.assert_allclose(timing.flops, flops.count(_net, *args))
