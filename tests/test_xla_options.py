"""Per-program XLA:CPU options: applied on the CPU only, to the programs that ask for them, and
they change the compiled program (Winograd tile products leave YNNPACK) but not its results."""
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import xla_options
from jaxstyle.benchmark import runner
from jaxstyle.methods import johnson
from jaxstyle.methods.johnson import inference as johnson_inference
from jaxstyle.nn import winograd


def _ynn_fusions(compiled) -> int:
  return compiled.as_text().count("__ynn")


def _tile_products(x, u):
  return winograd._winograd(x, u, 1)  # pylint: disable=protected-access


def test_small_dots_move_winograd_products_out_of_ynnpack():
  x = jax.random.normal(jax.random.key(0), (1, 34, 34, 128))
  u = winograd.transform_kernel(jax.random.normal(jax.random.key(1), (3, 3, 128, 128)) * 0.05)
  default = jax.jit(_tile_products).lower(x, u).compile()
  options = xla_options.for_cpu(xla_options.SMALL_DOTS)
  assert options == xla_options.SMALL_DOTS
  tuned = jax.jit(_tile_products, compiler_options=options).lower(x, u).compile()
  if not _ynn_fusions(default):
    pytest.skip("this XLA:CPU does not hand dots to YNNPACK: the option has nothing to move")
  assert _ynn_fusions(tuned) < _ynn_fusions(default)
  np.testing.assert_allclose(tuned(x, u), default(x, u), rtol=1e-5, atol=1e-4)


def test_library_programs_compile_with_the_options():
  # Johnson's stylization program, as `stylize` runs it, against the same function plainly jitted.
  model = johnson.TransformerNet(johnson.JohnsonConfig(width=0.25))
  x = jnp.zeros((1, 32, 32, 3))
  params = model.init(jax.random.key(0), x)["params"]
  apply = johnson_inference._apply  # pylint: disable=protected-access
  tuned = apply.current().lower(model, params, x).compile()
  plain = jax.jit(apply.__wrapped__, static_argnames=("model",)).lower(model, params, x).compile()
  if not _ynn_fusions(plain):
    pytest.skip("this XLA:CPU does not hand dots to YNNPACK: the option has nothing to move")
  assert _ynn_fusions(tuned) < _ynn_fusions(plain)


def test_options_only_on_the_cpu_and_only_when_enabled(monkeypatch):
  assert xla_options.for_cpu(None) is None
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert xla_options.for_cpu(xla_options.SMALL_DOTS) is None
  monkeypatch.undo()
  try:
    xla_options.set_enabled(False)
    assert xla_options.for_cpu(xla_options.SMALL_DOTS) is None
  finally:
    xla_options.set_enabled(True)
  assert xla_options.for_cpu(xla_options.SMALL_DOTS) == xla_options.SMALL_DOTS


def test_unknown_option_falls_back_to_a_plain_compile(caplog):
  f = xla_options.jit(lambda x: x * 2, cpu_options={"xla_cpu_no_such_option": "1"})
  with caplog.at_level(logging.WARNING):
    np.testing.assert_array_equal(f(jnp.arange(3.0)), [0.0, 2.0, 4.0])
  assert "xla_cpu_no_such_option" in caplog.text
  assert xla_options.for_cpu({"xla_cpu_no_such_option": "1"}) is None


def test_jit_wrapper_keeps_static_arguments_and_traces_once_per_shape():
  traces = []

  @functools.partial(xla_options.jit, cpu_options=xla_options.SMALL_DOTS,
                     static_argnames=("power",))
  def f(x, power):
    traces.append(power)
    return x ** power

  x = jnp.arange(4.0)
  np.testing.assert_array_equal(f(x, power=2), x ** 2)
  np.testing.assert_array_equal(f(x + 1, power=2), (x + 1) ** 2)
  np.testing.assert_array_equal(f(x, power=3), x ** 3)
  assert traces == [2, 3]
  try:  # switching the options off compiles another program with the same results
    xla_options.set_enabled(False)
    np.testing.assert_array_equal(f(x, power=2), x ** 2)
  finally:
    xla_options.set_enabled(True)


def test_johnson_stylize_same_with_and_without_the_options():
  config = johnson.JohnsonConfig(width=0.25)
  model = johnson.TransformerNet(config)
  x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
  params = model.init(jax.random.key(1), x)["params"]
  image = np.asarray(jax.random.uniform(jax.random.key(2), (32, 32, 3)))
  tuned = johnson_inference.stylize(model, params, image)
  try:
    xla_options.set_enabled(False)
    plain = johnson_inference.stylize(model, params, image)
  finally:
    xla_options.set_enabled(True)
  np.testing.assert_allclose(tuned, plain, atol=1e-5)


def test_benchmark_switch_times_cases_without_the_options():
  config = runner.BenchmarkConfig(methods=("johnson",), resolutions=(32,), batch_sizes=(1,),
                                  repeats=1, warmup=0, rounds=1, torch_modes=(),
                                  kinds=("inference",), width=0.25, cpu_program_options=False)
  (row,) = runner.run(config, log=lambda msg: None)["results"]
  assert "error" not in row, row
  assert "compiler_options" not in row


def test_initialisation_runs_unoptimised_with_the_same_values(monkeypatch):
  from jaxstyle.train import loop  # pylint: disable=g-import-not-at-top
  assert xla_options.for_cpu(xla_options.RUN_ONCE) == xla_options.RUN_ONCE  # this XLA takes it
  used = []
  real_jit = xla_options.jit

  def recording_jit(fun, **kwargs):
    used.append(kwargs["cpu_options"])
    return real_jit(fun, **kwargs)

  monkeypatch.setattr(xla_options, "jit", recording_jit)

  def init(key, batch):  # a trainer's init in miniature: random parameters and a style statistic
    k1, k2 = jax.random.split(key)
    return {"kernel": jax.nn.initializers.normal(0.02)(k1, (3, 3, 8, 16)),
            "gram": jnp.einsum("bhwc,bhwd->cd", batch, batch) / 64,
            "noise": jax.random.uniform(k2, (5,))}

  key, batch = jax.random.key(0), jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
  got = loop.init_leaves(init, key, batch)
  assert used == [xla_options.RUN_ONCE]
  want = jax.tree_util.tree_leaves(jax.jit(init)(key, batch))
  assert len(got) == len(want)
  for g, w in zip(got, want):  # the same values (up to rounding: LLVM may contract differently)
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
