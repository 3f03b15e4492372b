"""Reading trained StyleBank workdirs: for inference and as the base of incremental learning."""
import dataclasses
from typing import Any, Dict, List, Tuple

from jaxstyle import api
from jaxstyle.errors import CheckpointError
from jaxstyle.methods.stylebank.model import ARCH_FIELDS
from jaxstyle.methods.stylebank.model import StyleBankConfig
from jaxstyle.methods.stylebank.model import StyleBankNet
from jaxstyle.methods.stylebank.model import merge_new_banks
from jaxstyle.train import checkpoint

METHOD = "stylebank"


def config_from_dict(d: Dict[str, Any]) -> StyleBankConfig:
  """Rebuilds a StyleBankConfig from `config.json` (unknown keys rejected)."""
  return api.config_from_dict(StyleBankConfig, d)


def load(workdir: str) -> Tuple[StyleBankNet, Dict[str, Any], StyleBankConfig]:
  """Loads a trained StyleBank (fresh or incremental run) for inference.

  Returns:
    (net, params, config) with params `{'encoder', 'decoder', 'banks'}` holding every bank.
  Raises:
    CheckpointError: not a StyleBank workdir, or its checkpoint does not match its config.
  """
  net, params, config, _ = load_with_meta(workdir)
  return net, params, config


def load_with_meta(workdir: str):
  """`load` plus the saved `config.json["config"]` (style paths, number of styles)."""
  meta = checkpoint.load_method_config(workdir, METHOD)
  config = config_from_dict(meta["model"])
  params = merge_new_banks(checkpoint.load_params(workdir))
  for part in ("encoder", "decoder", "banks"):
    if part not in params:
      raise CheckpointError(f"checkpoint in {workdir} has no {part!r} parameters")
  num = StyleBankNet.num_styles(params)
  if num != meta.get("num_styles", num):
    raise CheckpointError(f"checkpoint in {workdir} has {num} banks but its config says "
                          f"{meta['num_styles']}")
  return StyleBankNet(config), params, config, meta


def load_base(workdir: str) -> Tuple[StyleBankConfig, Dict[str, Any], List[str]]:
  """The model an incremental run extends: (config, params, style paths)."""
  _, params, config, meta = load_with_meta(workdir)
  return config, params, list(meta.get("style_paths") or [])


def inherit_architecture(config: StyleBankConfig, base: StyleBankConfig) -> StyleBankConfig:
  """The new banks must fit the base encoder/decoder: take its architecture settings."""
  return dataclasses.replace(config, **{k: getattr(base, k) for k in ARCH_FIELDS})
