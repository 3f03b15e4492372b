"""AdaIN: Huang & Belongie 2017, "Arbitrary Style Transfer in Real-time with Adaptive Instance
Normalization".

A frozen VGG encoder, AdaIN on relu4_1 and a trained decoder: `model` (Decoder, AdaINConfig),
`trainer` (make_trainer for `launch/train.py`), `inference` (load; load_released for the
released pytorch-AdaIN files; stylize, run_stylize and export_onnx for `launch/stylize.py`).
"""
from jaxstyle.methods.adain.inference import AdaINModel
from jaxstyle.methods.adain.inference import export_onnx
from jaxstyle.methods.adain.inference import load
from jaxstyle.methods.adain.inference import load_released
from jaxstyle.methods.adain.inference import make_stylizer
from jaxstyle.methods.adain.inference import run_stylize
from jaxstyle.methods.adain.inference import stylize
from jaxstyle.methods.adain.model import AdaINConfig
from jaxstyle.methods.adain.model import Decoder
from jaxstyle.methods.adain.trainer import AdaINTrainer
from jaxstyle.methods.adain.trainer import make_trainer
