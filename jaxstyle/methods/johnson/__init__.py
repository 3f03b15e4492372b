"""Johnson et al. 2016, "Perceptual Losses for Real-Time Style Transfer and Super-Resolution".

One feed-forward image transformation network per style, trained with a VGG perceptual loss:
`model` (TransformerNet, JohnsonConfig), `trainer` (make_trainer for `launch/train.py`) and
`inference` (load, stylize, run_stylize and export_onnx for `launch/stylize.py`).
"""
from jaxstyle.methods.johnson.inference import export_onnx
from jaxstyle.methods.johnson.inference import load
from jaxstyle.methods.johnson.inference import grid_style_paths
from jaxstyle.methods.johnson.inference import make_stylizer
from jaxstyle.methods.johnson.inference import run_stylize
from jaxstyle.methods.johnson.inference import stylize
from jaxstyle.methods.johnson.inference import TILING
from jaxstyle.methods.johnson.model import JohnsonConfig
from jaxstyle.methods.johnson.model import TransformerNet
from jaxstyle.methods.johnson.trainer import JohnsonTrainer
from jaxstyle.methods.johnson.trainer import make_trainer
