"""`jaxstyle.compile_cache`: a second process loads the first one's compiled program."""
import os
import subprocess
import sys

import pytest

from jaxstyle import compile_cache
from jaxstyle.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROGRAM = """
import os, sys, jax, jax.numpy as jnp
from jaxstyle import compile_cache
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
paths = compile_cache.enable(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
print(os.environ["XLA_FLAGS"])
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
print(float(f(jnp.ones((64, 64)))))
print(len(os.listdir(paths["jax"])), len(hits))
"""


def _run(cache, xla_flags=""):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, XLA_FLAGS=xla_flags)
  out = subprocess.run([sys.executable, "-c", _PROGRAM, cache], env=env, capture_output=True,
                       text=True, timeout=300, check=True)
  return out.stdout.split("\n")


def test_programs_are_cached_and_flags_kept(tmp_path):
  cache = str(tmp_path / "xla")
  flags, value, counts = _run(cache)[:3]
  assert flags == f"--xla_gpu_per_fusion_autotune_cache_dir={cache}/autotune"
  entries, hits = map(int, counts.split())
  assert entries >= 1 and hits == 0 and os.path.isdir(f"{cache}/autotune")
  # A second process loads the program from the cache instead of compiling it.
  flags2, value2, counts2 = _run(cache)[:3]
  assert (flags2, value2) == (flags, value)
  assert counts2.split()[0] == str(entries) and int(counts2.split()[1]) >= 1
  # An autotuning directory the user already chose is kept (other XLA flags: other cache keys).
  mine = f"--xla_gpu_per_fusion_autotune_cache_dir={tmp_path}/mine"
  assert _run(cache, f"--xla_force_host_platform_device_count=2 {mine}")[0] == (
      f"--xla_force_host_platform_device_count=2 {mine}")


def test_unwritable_directory_is_a_config_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(ConfigError, match="cannot use .* as the compilation cache"):
    compile_cache.enable(str(blocker / "xla"))
