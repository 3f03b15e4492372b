"""What the launchers hand to a method: one request type for stylizing, one for training.

The launchers turn flags into these requests and look the method up in `METHODS`; each method module
implements the entry points it supports:

  run_stylize(request: StylizeRequest) -> np.ndarray[H, W, 3] float32 in [0, 1]
  make_stylizer(request) -> (content01 -> result)   # optional: checks and loads once (see below)
  make_trainer(request: TrainRequest) -> (trainer, dataset)   # feed-forward methods only

`overrides` carries `--set key=value` pairs for the method's own config dataclass; `apply_overrides`
turns them into a new config and rejects unknown keys.
"""
import dataclasses
import importlib
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

from jaxstyle.errors import ConfigError, WeightsError

METHODS = {
    "gatys": "jaxstyle.methods.gatys",
    "histogram": "jaxstyle.methods.histogram",
    "johnson": "jaxstyle.methods.johnson",
    "msgnet": "jaxstyle.methods.msgnet",
    "stylebank": "jaxstyle.methods.stylebank",
    "adain": "jaxstyle.methods.adain",
    "magenta": "jaxstyle.methods.magenta",
    "tspr": "jaxstyle.methods.tspr",
}
OPTIMIZATION_METHODS = ("gatys", "histogram")
TRAINABLE_METHODS = ("johnson", "msgnet", "stylebank", "adain", "magenta", "tspr")


# The reference implementations' batch and run length (REFERENCES.md), used by `launch/train.py`
# when --batch_size / --steps are not given.
TRAIN_DEFAULTS = {
    "johnson": {"batch_size": 4, "steps": 40_000},       # fast-neural-style: 40k iterations
    "msgnet": {"batch_size": 4, "steps": 41_400},        # 2 epochs of COCO 2014 train (82,783)
    "stylebank": {"batch_size": 4, "steps": 300_000},
    "adain": {"batch_size": 8, "steps": 160_000},
    "magenta": {"batch_size": 8, "steps": 3_000_000},    # its README's ~3M (the flag default: 8M)
    "tspr": {"batch_size": 2, "steps": 614_400},         # 200 epochs of 6144 pairs
}


def train_settings(method: str, batch_size: Optional[int] = None,
                   steps: Optional[int] = None) -> Tuple[int, int]:
  """`(batch_size, steps)`: the given values, or the method's reference ones where None."""
  defaults = TRAIN_DEFAULTS[method]
  return (defaults["batch_size"] if batch_size is None else batch_size,
          defaults["steps"] if steps is None else steps)


def default_train_weights(method: str, cache_dir: Optional[str] = None) -> str:
  """The loss network a trainer gets when none is named.

  AdaIN's encoder is a VGG19 (the reference uses Gatys' rescaled "normalised" VGG19, which loads
  when named: `vgg_normalised.pth`): torchvision's VGG19 is used when its file is on disk (the
  jaxstyle cache or torch.hub's folder; it is never downloaded). Everything else, and AdaIN
  without that file, gets the default HED VGG16.
  """
  if method == "adain":
    # Imported here: pretrained/ imports jaxstyle for the layer tables.
    from pretrained import cache, torchvision_pth  # pylint: disable=g-import-not-at-top
    try:
      torchvision_pth.locate(19, cache.cache_dir(cache_dir, create=False))
      return "torchvision-vgg19"
    except WeightsError:
      pass
  return "hed-vgg16"


@dataclasses.dataclass
class StylizeRequest:
  """Everything `launch/stylize.py` knows, already validated and loaded."""
  method: str
  content: Optional[np.ndarray]                  # [H, W, 3] in [0, 1]; None = texture synthesis
  styles: Sequence[np.ndarray] = ()              # each [h, w, 3] in [0, 1]
  style_weights: Optional[Sequence[float]] = None  # blend weights, one per style (normalised by caller)
  masks: Optional[Sequence[np.ndarray]] = None   # one [H, W] mask per style (spatial control)
  size: int = 512                                # long side of the output
  steps: int = 500                               # optimisation steps (optimisation methods)
  optimizer: str = "lbfgs"                       # lbfgs | adam
  learning_rate: Optional[float] = None          # None = the method's default
  init: str = "content"                          # content | noise | path to an image
  alpha: float = 1.0                             # content(0) .. style(1) trade-off
  preserve_color: str = "none"                   # none | luminance | histogram
  style_size: Optional[int] = None               # brush size: long side of the style image
  style_index: Optional[Sequence[int]] = None    # styles of a multi-style checkpoint
  checkpoint: Optional[str] = None               # trained model (feed-forward methods)
  weights: str = "hed-vgg16"                     # loss network weights
  seed: int = 0
  overrides: dict = dataclasses.field(default_factory=dict)
  progress: Optional[Callable[[int, float], None]] = None  # called with (step, loss)
  tile: int = 0                                  # > 0: in windows this size (`jaxstyle.tiling`)
  tile_margin: int = 64                          # context thrown away around each window's core
  tile_thumbnail: int = 0                        # long side for the statistics; 0 = tile


@dataclasses.dataclass
class TrainRequest:
  """Everything `launch/train.py` knows."""
  method: str
  content_dir: Optional[str]
  style_dir: Optional[str]
  workdir: str
  image_size: int = 256
  batch_size: int = 4
  steps: int = 40000
  learning_rate: Optional[float] = None
  grad_clip_norm: float = 0.0                    # > 0: clip each step's gradient norm (all methods)
  weights: str = ""                              # "" = default_train_weights(method)
  seed: int = 0
  mixed_precision: bool = False
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  log_every: int = 50
  summary_every: int = 500
  max_nonfinite: int = 10
  overrides: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.weights = self.weights or default_train_weights(self.method)


def get_method(name: str):
  """Imports the method module for `name`, or raises a one-line ConfigError."""
  if name not in METHODS:
    raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
  return importlib.import_module(METHODS[name])


def make_stylizer(request: StylizeRequest) -> Callable[[np.ndarray], np.ndarray]:
  """Checks `request` and loads its model once; returns `content01 -> result` for any content.

  Feed-forward methods (a `make_stylizer` in their module) load their checkpoint here, so a folder
  of frames pays for it once; the optimisation methods run `run_stylize` per content image, and
  their settings are checked on the first.
  """
  module = get_method(request.method)
  if request.tile and not getattr(module, "TILING", False):
    raise ConfigError(f"{request.method} does not stylize in tiles (tile={request.tile})")
  make = getattr(module, "make_stylizer", None)
  if make is not None:
    return make(request)
  return lambda content01: module.run_stylize(dataclasses.replace(request, content=content01))


def parse_overrides(items: Sequence[str]) -> dict:
  """Parses `key=value` strings (from `--set`) into a dict of strings."""
  out = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ConfigError(f"--set expects key=value, got {item!r}")
    out[key.strip()] = value.strip()
  return out


def apply_overrides(config: Any, overrides: dict) -> Any:
  """Returns a copy of dataclass `config` with `overrides` (strings) cast to each field's type."""
  fields = {f.name: f for f in dataclasses.fields(config)}
  changes = {}
  for key, text in overrides.items():
    if key not in fields:
      raise ConfigError(
          f"unknown setting {key!r} for {type(config).__name__}; known: {', '.join(sorted(fields))}")
    current = getattr(config, key)
    changes[key] = _cast(key, text, current)
  return dataclasses.replace(config, **changes)


def _cast(key: str, text: Any, current: Any) -> Any:
  if not isinstance(text, str):
    return text
  try:
    if isinstance(current, bool):
      if text.lower() in ("1", "true", "yes"):
        return True
      if text.lower() in ("0", "false", "no"):
        return False
      raise ValueError(text)
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, tuple):
      parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
      kind = type(current[0]) if current else str
      return tuple(kind(p.strip()) for p in parts)
  except ValueError:
    raise ConfigError(f"bad value {text!r} for setting {key!r}") from None
  return text


def with_style_layer_weights(config: Any) -> Any:
  """`config` with `style_layer_weights` as floats, checked: empty (all 1) or one per style layer.

  Raises:
    ConfigError: a weight is not a number, or the count does not match `style_layers`.
  """
  try:
    weights = tuple(float(w) for w in config.style_layer_weights)
  except ValueError:
    raise ConfigError(f"style_layer_weights must be numbers, got {config.style_layer_weights}"
                      ) from None
  if weights and len(weights) != len(config.style_layers):
    raise ConfigError(f"style_layer_weights needs {len(config.style_layers)} values, one per "
                      f"style layer, got {len(weights)}")
  return dataclasses.replace(config, style_layer_weights=weights)


def config_from_dict(cls: Any, values: dict, *, strict: bool = True) -> Any:
  """Rebuilds config dataclass `cls` from its `config.json` form (JSON lists back to tuples).

  With `strict`, keys `cls` does not know raise CheckpointError (the checkpoint belongs to another
  version of the model); otherwise they are ignored.
  """
  from jaxstyle.errors import CheckpointError  # pylint: disable=g-import-not-at-top
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = set(values) - set(fields)
  if unknown and strict:
    raise CheckpointError(f"checkpoint config has unknown {cls.__name__} settings: {sorted(unknown)}")
  for key, value in values.items():
    if key in fields and not _fits(value, fields[key].default):
      kind = _KINDS.get(type(fields[key].default).__name__, "another type")
      raise CheckpointError(f"checkpoint config has {key}={value!r} where {kind} belongs "
                            "(config.json edited?)")
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields})


_KINDS = {"bool": "true/false", "int": "an integer", "float": "a number", "str": "a string",
          "tuple": "a list"}


def _fits(value: Any, default: Any) -> bool:
  """Whether a `config.json` value has the type of a field's default (None and factories: any)."""
  if default is None or default is dataclasses.MISSING:
    return True
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, (int, float)):
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and (isinstance(default, float) or isinstance(value, int))
  if isinstance(default, str):
    return isinstance(value, str)
  if isinstance(default, tuple):
    return isinstance(value, (list, tuple))
  return True
