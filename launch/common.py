"""What every launcher shares: one-line errors instead of tracebacks, and output path checks."""
import os
import sys

from absl import app
from absl import logging

from jaxstyle.errors import ConfigError, JaxstyleError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def run(main):
  """`absl.app.run(main)`, printing `error: ...` and exiting 2 on a JaxstyleError."""

  def guarded(argv):
    try:
      return main(argv)
    except JaxstyleError as e:
      logging.flush() if hasattr(logging, "flush") else None
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      print("error: interrupted", file=sys.stderr)
      sys.exit(130)

  app.run(guarded)


def check_output_path(path: str, *, overwrite: bool, suffixes=IMAGE_SUFFIXES) -> str:
  """Fails early (before any compute) when `path` cannot become the requested output file."""
  if not path:
    raise ConfigError("an output path is required")
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    raise ConfigError(f"output {path} is a directory")
  if suffixes and os.path.splitext(path)[1].lower() not in suffixes:
    raise ConfigError(f"output {path} must end in one of {', '.join(suffixes)}")
  if os.path.exists(path) and not overwrite:
    raise ConfigError(f"output {path} exists (pass --overwrite to replace it)")
  parent = os.path.dirname(path)
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"cannot create output directory {parent}: {e.strerror}") from None
  if not os.access(parent, os.W_OK):
    raise ConfigError(f"output directory {parent} is not writable")
  return path


def positive(name: str, value, allow_none=False):
  """Raises ConfigError unless `value` > 0."""
  if value is None and allow_none:
    return
  if value is None or value <= 0:
    raise ConfigError(f"--{name} must be positive, got {value}")
