"""TSPR: Two-Stage Peer-Regularized Feature Recombination (Svoboda et al., CVPR 2020, arXiv 1906.02913).

Zero-shot arbitrary style transfer without a VGG loss network: an encoder splits each image's latent
code into content and style parts, a two-stage kNN graph-attention layer (`jaxstyle.nn.recombination`)
recombines the content image's codes with those of a peer (style) image, and a decoder renders the
result. Trained adversarially with metric learning on style codes over painter classes.

  make_trainer(request) -> (trainer, dataset)    # launch/train.py --method=tspr
  run_stylize(request) -> image                  # launch/stylize.py --method=tspr --checkpoint=...
  make_stylizer(request) -> (content -> image)   # the same, loading once for a folder of images
  load(workdir) -> (model, variables, config); stylize(model, variables, content, styles, ...)
"""
from absl import logging

from jaxstyle import api
from jaxstyle.methods.tspr.config import TSPRConfig, validate
from jaxstyle.methods.tspr.data import TSPRPairs, make_dataset
from jaxstyle.methods.tspr.inference import load, make_stylizer, run_stylize, stylize
from jaxstyle.methods.tspr.trainer import TSPRTrainer
from jaxstyle.train.precision import compute_dtype


def make_trainer(request: api.TrainRequest):
  """Builds the TSPR trainer and its paired photo/painting dataset from a TrainRequest."""
  config = validate(api.apply_overrides(TSPRConfig(), request.overrides), request.image_size)
  load_size = max(request.image_size, int(round(request.image_size * config.load_size_ratio)))
  dataset = make_dataset(request.content_dir, request.style_dir, request.image_size,
                         seed=request.seed, load_size=load_size)
  trainer = TSPRTrainer(config, global_batch=request.batch_size, image_size=request.image_size,
                        lr=request.learning_rate, dtype=compute_dtype(request))
  per_epoch = max(1, config.epoch_size // request.batch_size)
  decay_from = config.niter * per_epoch
  schedule_end = (config.niter + config.niter_decay) * per_epoch
  if request.steps <= decay_from:
    # The schedule counts the reference's epochs: a short run never reaches the decay.
    logging.warning("TSPR's learning rate decays linearly from epoch %d (step %d at batch %d) to "
                    "epoch %d (step %d); --steps=%d ends before the decay starts",
                    config.niter, decay_from, request.batch_size, config.niter + config.niter_decay,
                    schedule_end, request.steps)
  return trainer, dataset


__all__ = ["TSPRConfig", "TSPRPairs", "TSPRTrainer", "load", "make_stylizer", "make_trainer",
           "run_stylize", "stylize"]
