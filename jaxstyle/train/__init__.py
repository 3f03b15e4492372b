"""The shared training stack: state, trainer protocol, sharding, loop, checkpoints, summaries.

Import submodules directly (`from jaxstyle.train import loop`); the names below are the common
ones.
"""
from jaxstyle.train.api import Dataset, Trainer
from jaxstyle.train.precision import compute_dtype
from jaxstyle.train.state import TrainState
