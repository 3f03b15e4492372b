"""User-facing errors: one line, caught by the launchers and printed as `error: ...`."""


class JaxstyleError(Exception):
  """Base class of every error caused by user input (files, flags, weights)."""


class ImageError(JaxstyleError):
  """An image file is missing, unreadable, corrupt or unusable."""


class WeightsError(JaxstyleError):
  """A weight file is missing, corrupt or does not match the model."""


class CheckpointError(JaxstyleError):
  """A checkpoint is missing, corrupt or belongs to another model."""


class ConfigError(JaxstyleError):
  """Flags or config values are invalid or conflict."""


class TooSmallError(ConfigError, ValueError):
  """An image is too small for a network's padding or neighbourhoods (raised while tracing)."""


class TrainingError(JaxstyleError):
  """Training cannot go on (e.g. too many consecutive non-finite steps)."""
