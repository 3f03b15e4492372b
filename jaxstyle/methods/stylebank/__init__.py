"""StyleBank (Chen et al. 2017, "An Explicit Representation for Neural Image Style Transfer").

A shared auto-encoder (E, D) and one convolutional filter bank per style, trained with the (T+1)
schedule; incremental learning of new banks with E and D frozen; linear and region fusion of banks
at inference. `model` (networks), `trainer` (steps, Trainer), `pipeline` (make_trainer: data and
styles), `checkpoints` (load) and `inference` (stylize, run_stylize, export_onnx).
"""
from jaxstyle.methods.stylebank.checkpoints import load
from jaxstyle.methods.stylebank.inference import export_onnx
from jaxstyle.methods.stylebank.inference import grid_style_paths
from jaxstyle.methods.stylebank.inference import make_stylizer
from jaxstyle.methods.stylebank.inference import run_stylize
from jaxstyle.methods.stylebank.inference import stylize
from jaxstyle.methods.stylebank.model import StyleBankConfig
from jaxstyle.methods.stylebank.model import StyleBankNet
from jaxstyle.methods.stylebank.pipeline import make_trainer
from jaxstyle.methods.stylebank.trainer import StyleBankTrainer
