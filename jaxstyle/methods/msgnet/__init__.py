"""MSG-Net (Zhang & Dana 2017, "Multi-style Generative Network for Real-time Transfer").

One feed-forward network for many styles: a Siamese encoder turns any style image into a Gram
matrix that the CoMatch layer matches inside the generator. `model` (MSGNet, MSGNetConfig),
`data` (multi-style batches), `trainer` (make_trainer for `launch/train.py`) and `inference`
(load, stylize, run_stylize and export_onnx for `launch/stylize.py`).
"""
from jaxstyle.methods.msgnet.inference import export_onnx
from jaxstyle.methods.msgnet.inference import load
from jaxstyle.methods.msgnet.inference import make_stylizer
from jaxstyle.methods.msgnet.inference import run_stylize
from jaxstyle.methods.msgnet.inference import style_gram
from jaxstyle.methods.msgnet.inference import stylize
from jaxstyle.methods.msgnet.inference import TILING
from jaxstyle.methods.msgnet.model import MSGNet
from jaxstyle.methods.msgnet.model import MSGNetConfig
from jaxstyle.methods.msgnet.trainer import MSGNetTrainer
from jaxstyle.methods.msgnet.trainer import make_trainer
