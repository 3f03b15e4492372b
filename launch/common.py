"""What every launcher shares: one-line errors, quiet logs, output path checks."""
import os
import signal
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging

from jaxstyle import compile_cache
from jaxstyle import hostmem
from jaxstyle.errors import ConfigError, JaxstyleError
from jaxstyle.nn import reflect_conv

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_RETAIN_HOST_MEMORY = flags.DEFINE_bool(
    "retain_host_memory", True,
    "Keep freed host memory for reuse (glibc only): XLA:CPU's large per-call temporaries otherwise "
    "come from fresh zero-filled pages every call (a sixth of a CPU Gatys iteration). Peak "
    "resident size ~10% higher.")
_SINGLE_MALLOC_ARENA = flags.DEFINE_bool(
    "single_malloc_arena", False,
    "With --retain_host_memory, also serve XLA's worker threads from the main heap: with "
    "--cpu_async_dispatch, removes the page faults that remain (AdaIN/TSPR on CPU ~10-15% "
    "faster) but can double the peak resident size.")
_CPU_ASYNC_DISPATCH = flags.DEFINE_bool(
    "cpu_async_dispatch", False,
    "Let XLA:CPU calls return before they finish (JAX's default). Off: each call runs on the "
    "calling thread, which on the 2-core development machine makes AdaIN and MSG-Net inference "
    "~25-40% faster and training steps ~8%. No effect on GPU/TPU.")

_GPU_REFLECT_PADDING = flags.DEFINE_enum(
    "gpu_reflect_padding", "pass", reflect_conv.MODES,
    "Off CPU, how stride-1 reflection-padded convolutions pad: 'pass' writes the padded map in "
    "one fused pass (measured), 'border' convolves zero-padded inside the convolution call and "
    "corrects the border from thin strips (same results; not yet timed on a GPU). CPU: ignored.")

_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None,
    "Keep compiled programs (JAX's persistent cache) and XLA's convolution autotuning results "
    "here, so later runs skip most of the compile (GPU: an MSG-Net train step 57 s -> 9 s). Off "
    "when unset.")


def fail(message: str, code: int = 2):
  """Prints `error: <message>` as the single line on stderr and exits with `code`."""
  sys.stdout.flush()
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  # A failed orbax restore leaves coroutines behind that complain ("Exception ignored in ...",
  # with a traceback) when the interpreter collects them at exit; the error is already reported.
  sys.unraisablehook = lambda unraisable: None
  sys.exit(code)


def _parse_flags(argv):
  # absl's own parser prints a two-line "FATAL Flags parsing error" and exits 1; a mistyped flag
  # is user input like any other, so it gets the launchers' one-line form and exit code 2.
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).strip().splitlines()[0] if str(e).strip() else "bad flags")


def _not_orbax(record) -> bool:
  return f"{os.sep}orbax{os.sep}" not in (record.pathname or "")


def quiet_logging():
  """Shows warnings and errors only, and nothing from orbax, unless --verbosity/-v is given.

  absl turns INFO on after parsing flags, and orbax and jax log dozens of INFO lines per
  checkpoint: they would bury a launcher's own output and its one-line errors. Orbax also logs
  warnings and errors on its way to raising for an unreadable checkpoint; what matters reaches
  the user as that exception's one-line `error:`.
  """
  if flags.FLAGS["verbosity"].present:
    return
  logging.set_verbosity(logging.WARNING)
  handler = logging.get_absl_handler()
  if _not_orbax not in handler.filters:
    handler.addFilter(_not_orbax)


class _Terminated(KeyboardInterrupt):
  """SIGTERM, raised in the main thread so that `finally` blocks and cleanups run."""


def _terminated(signum, frame):
  del signum, frame
  raise _Terminated()


def run(main):
  """`absl.app.run(main)`, printing `error: ...` and exiting 2 on a JaxstyleError or bad flags."""

  def guarded(argv):
    quiet_logging()
    if _SINGLE_MALLOC_ARENA.value and not _RETAIN_HOST_MEMORY.value:
      fail("--single_malloc_arena needs --retain_host_memory")
    if _RETAIN_HOST_MEMORY.value:
      hostmem.retain_freed_memory(single_arena=_SINGLE_MALLOC_ARENA.value)
    if not hostmem.set_cpu_async_dispatch(_CPU_ASYNC_DISPATCH.value):
      logging.warning("--cpu_async_dispatch: JAX's CPU backend already exists; left as it is")
    reflect_conv.set_mode(_GPU_REFLECT_PADDING.value)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
      # A plain SIGTERM kills without unwinding, which would leave a half-moved output's temporary
      # file behind; as an exception the writers' cleanups run. (Training installs its own
      # handler, which saves a checkpoint instead.)
      signal.signal(signal.SIGTERM, _terminated)
    try:
      if _COMPILATION_CACHE_DIR.value:
        compile_cache.enable(_COMPILATION_CACHE_DIR.value)
      return main(argv)
    except JaxstyleError as e:
      fail(str(e))
    except _Terminated:
      fail("terminated", 128 + signal.SIGTERM)
    except KeyboardInterrupt:
      fail("interrupted", 130)

  app.run(guarded, flags_parser=_parse_flags)


def _nearest_existing(path: str) -> str:
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def check_output_dir(path: str) -> str:
  """Fails early when `path` cannot become (or is not) a writable output folder; creates nothing."""
  if not path:
    raise ConfigError("an output folder is required")
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"output {path} is a file; with a content folder --output names a folder")
  if os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES:
    raise ConfigError(f"with a content folder --output names a folder, got {path}")
  _check_writable(path)
  return path


def _check_writable(directory: str):
  existing = _nearest_existing(directory)
  if not os.path.isdir(existing):
    raise ConfigError(f"cannot create output directory {directory}: {existing} is not a directory")
  # os.access says yes to root even on read-only mounts (and /sys, /proc): try a real file.
  try:
    fd, probe = tempfile.mkstemp(prefix=".jaxstyle-probe-", dir=existing)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    if existing == directory:
      raise ConfigError(f"output directory {directory} is not writable ({e.strerror})") from None
    raise ConfigError(f"cannot create output directory {directory}: {existing} is not writable "
                      f"({e.strerror})") from None


def check_output_path(path: str, *, overwrite: bool, suffixes=IMAGE_SUFFIXES) -> str:
  """Fails early (before any compute) when `path` cannot become the requested output file.

  Creates nothing: a run that fails later must not leave new (empty) folders behind; the writer
  creates the parent folders when it saves.
  """
  if not path:
    raise ConfigError("an output path is required")
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    raise ConfigError(f"output {path} is a directory")
  if suffixes and os.path.splitext(path)[1].lower() not in suffixes:
    raise ConfigError(f"output {path} must end in one of {', '.join(suffixes)}")
  if os.path.exists(path) and not overwrite:
    raise ConfigError(f"output {path} exists (pass --overwrite to replace it)")
  _check_writable(os.path.dirname(path))
  return path


def positive(name: str, value, allow_none=False):
  """Raises ConfigError unless `value` > 0 and finite."""
  if value is None and allow_none:
    return
  if value is None or not value > 0 or value == float("inf"):  # `not >` also refuses NaN
    raise ConfigError(f"--{name} must be positive and finite, got {value}")
