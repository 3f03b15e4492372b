"""Ghiasi et al. 2017 arbitrary stylization ("Magenta"): a style prediction network maps any style
image to an embedding whose per-layer gamma/beta condition the instance norms of a transformer.

`model` (ArbitraryStyleNet, MagentaConfig), `trainer` (make_trainer for `launch/train.py`),
`inference` (load, stylize, run_stylize, export_onnx for `launch/stylize.py`), `published` (the
published TF-Lite weights: `--checkpoint=published`).
"""
from jaxstyle.methods.magenta.inference import embed
from jaxstyle.methods.magenta.inference import export_onnx
from jaxstyle.methods.magenta.inference import load
from jaxstyle.methods.magenta.inference import MagentaModel
from jaxstyle.methods.magenta.inference import make_stylizer
from jaxstyle.methods.magenta.inference import run_stylize
from jaxstyle.methods.magenta.inference import stylize
from jaxstyle.methods.magenta.inference import TILING
from jaxstyle.methods.magenta.model import ArbitraryStyleNet
from jaxstyle.methods.magenta.model import MagentaConfig
from jaxstyle.methods.magenta.trainer import MagentaTrainer
from jaxstyle.methods.magenta.trainer import make_trainer
from jaxstyle.methods.magenta.published import NAME as _PUBLISHED

# `--checkpoint` values that name weights rather than a path (checked by launch/stylize.py).
NAMED_CHECKPOINTS = (_PUBLISHED,)
