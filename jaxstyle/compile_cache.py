"""Persistent compilation caches: compile a program once per machine, not once per run.

`enable(directory)` turns on JAX's persistent compilation cache (whole compiled programs, keyed by
the program, its shapes, the jax/XLA versions and the device) in `directory/jax`, and XLA's
per-fusion autotuning cache in `directory/autotune`. On GPUs, choosing cuDNN convolution algorithms
is most of a compile: an H200 MSG-Net bf16 train step took 57 s to compile cold and 9 s with the
autotuning results of an earlier run whose program differed elsewhere (docs/benchmarks.md), and
those results carry over to any program with the same convolutions, which the whole-program cache
does not. Call it before the first JAX computation: XLA reads its flags when the backend starts.
"""
import os
import tempfile
from typing import Dict, Optional

import jax

from jaxstyle.errors import ConfigError

_AUTOTUNE_FLAG = "--xla_gpu_per_fusion_autotune_cache_dir"


def enable(directory: str) -> Dict[str, str]:
  """Caches compiled programs and autotuning results under `directory` (created if missing).

  An autotuning directory already named in `XLA_FLAGS` is kept. Returns {'jax': path,
  'autotune': path}; a directory that cannot be written is a ConfigError.
  """
  root = os.path.abspath(os.path.expanduser(directory))
  paths = {"jax": os.path.join(root, "jax"), "autotune": os.path.join(root, "autotune")}
  try:
    for path in paths.values():
      os.makedirs(path, exist_ok=True)
      with tempfile.TemporaryFile(dir=path):
        pass
  except OSError as e:
    raise ConfigError(f"cannot use {directory} as the compilation cache: "
                      f"{e.strerror or e}") from None
  jax.config.update("jax_compilation_cache_dir", paths["jax"])
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if _AUTOTUNE_FLAG not in xla_flags:
    os.environ["XLA_FLAGS"] = f"{xla_flags} {_AUTOTUNE_FLAG}={paths['autotune']}".strip()
  return paths


def directory() -> Optional[str]:
  """JAX's persistent cache directory in use, or None."""
  return jax.config.jax_compilation_cache_dir or None
