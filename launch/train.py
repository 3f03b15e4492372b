r"""Trains a feed-forward style transfer model with the shared training loop.

  python launch/train.py --method=johnson --content_dir=coco/ --style_dir=styles/starry \
      --workdir=workdirs/johnson_starry
  python launch/train.py --method=tspr --content_dir=places/ --style_dir=painters13/ --workdir=w/tspr

A run resumes from the latest checkpoint in --workdir. SIGTERM/SIGINT saves a checkpoint and exits.
Method-specific settings (loss weights, layer choices, ...) are `--set key=value`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from jaxstyle import api  # noqa: E402
from jaxstyle.errors import ConfigError  # noqa: E402
from launch import common  # noqa: E402

_METHOD = flags.DEFINE_string("method", "johnson", f"One of: {', '.join(api.TRAINABLE_METHODS)}.")
_CONTENT_DIR = flags.DEFINE_string("content_dir", None,
                                   "Folder of content photos (searched recursively). Unset: samples.")
_STYLE_DIR = flags.DEFINE_string(
    "style_dir", None, "Folder of style images (tspr: one sub-folder per style class). Unset: samples.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 256, "Training crop size.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Global batch size (split over all devices). Unset: the method's reference "
    "batch (johnson, msgnet, stylebank 4; adain, magenta 8; tspr 2).")
_STEPS = flags.DEFINE_integer(
    "steps", None, "Total training steps. Unset: the reference run's length (johnson 40k, msgnet "
    "41.4k = 2 COCO epochs, stylebank 300k, adain 160k, magenta 3M, tspr 614.4k = 200 epochs).")
_LR = flags.DEFINE_float("learning_rate", None, "Learning rate; unset = the method's default.")
_CLIP = flags.DEFINE_float(
    "grad_clip_norm", 0.0, "Clip each step's gradient to this global norm (optax "
    "clip_by_global_norm; per optimiser for GANs); 0 = no clipping.")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/run", "Checkpoints and summaries go here.")
_WEIGHTS = flags.DEFINE_string(
    "weights", "", "Loss network weights (see stylize.py). Default: hed-vgg16; for adain, "
    "torchvision-vgg19 when its file is on disk (a VGG19 like the reference encoder), else "
    "hed-vgg16.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of parameters and data order.")
_MIXED = flags.DEFINE_bool("mixed_precision", False, "bf16 compute with f32 parameters.")
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every", 1000, "Save a checkpoint every N steps.")
_KEEP = flags.DEFINE_integer("keep_checkpoints", 3, "How many checkpoints to keep.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Log scalars every N steps.")
_SUMMARY_EVERY = flags.DEFINE_integer("summary_every", 500, "Write image summaries every N steps.")
_MAX_NONFINITE = flags.DEFINE_integer(
    "max_nonfinite", 10, "Stop after this many consecutive steps with non-finite loss/gradients.")
_SET = flags.DEFINE_multi_string("set", [], "Method config override key=value (repeatable).")


def build_request() -> api.TrainRequest:
  if _METHOD.value not in api.TRAINABLE_METHODS:
    raise ConfigError(f"--method={_METHOD.value} cannot be trained; choose one of "
                      f"{', '.join(api.TRAINABLE_METHODS)}")
  batch_size, steps = api.train_settings(_METHOD.value, _BATCH_SIZE.value, _STEPS.value)
  for name, value in (("image_size", _IMAGE_SIZE.value), ("batch_size", batch_size),
                      ("steps", steps), ("checkpoint_every", _CKPT_EVERY.value),
                      ("keep_checkpoints", _KEEP.value), ("log_every", _LOG_EVERY.value),
                      ("summary_every", _SUMMARY_EVERY.value),
                      ("max_nonfinite", _MAX_NONFINITE.value)):
    common.positive(name, value)
  if _LR.value is not None:
    common.positive("learning_rate", _LR.value)
  if not 0 <= _CLIP.value < float("inf"):
    raise ConfigError(f"--grad_clip_norm must be >= 0 and finite, got {_CLIP.value}")
  for name, path in (("content_dir", _CONTENT_DIR.value), ("style_dir", _STYLE_DIR.value)):
    if path is not None and not os.path.isdir(path):
      raise ConfigError(f"--{name} {path} is not a directory")
  if os.path.exists(_WORKDIR.value) and not os.path.isdir(_WORKDIR.value):
    raise ConfigError(f"--workdir {_WORKDIR.value} exists and is not a directory")
  return api.TrainRequest(
      method=_METHOD.value, content_dir=_CONTENT_DIR.value, style_dir=_STYLE_DIR.value,
      workdir=os.path.abspath(_WORKDIR.value), image_size=_IMAGE_SIZE.value,
      batch_size=batch_size, steps=steps, learning_rate=_LR.value,
      grad_clip_norm=_CLIP.value,
      weights=_WEIGHTS.value, seed=_SEED.value, mixed_precision=_MIXED.value,
      checkpoint_every=_CKPT_EVERY.value, keep_checkpoints=_KEEP.value, log_every=_LOG_EVERY.value,
      summary_every=_SUMMARY_EVERY.value, max_nonfinite=_MAX_NONFINITE.value,
      overrides=api.parse_overrides(_SET.value))


def _print_progress(request):
  """A loop hook printing `step N/M loss=...` to stdout every `log_every` steps.

  The launchers log warnings only by default (see common.quiet_logging), so this is the visible
  progress; it also lets a supervisor (or a test) see how far a run got.
  """

  def hook(step, state, metrics):
    del state
    if step % request.log_every == 0 or step == request.steps:
      print(f"step {step}/{request.steps} loss={float(metrics['loss']):.6g}", flush=True)

  return hook


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  request = build_request()
  # Imported after the flag checks: orbax and the loop take seconds to import.
  from jaxstyle.train import checkpoint  # pylint: disable=g-import-not-at-top
  from jaxstyle.train import loop  # pylint: disable=g-import-not-at-top
  # Orbax would only fail on this at the first save, after all the compute.
  checkpoints = os.path.join(request.workdir, checkpoint.CHECKPOINT_DIR)
  if os.path.exists(checkpoints) and not os.path.isdir(checkpoints):
    raise ConfigError(f"{checkpoints} exists and is not a directory")
  trainer, dataset = api.get_method(request.method).make_trainer(request)
  # The first batch fails on a folder of only unreadable files: find out before the loop creates
  # the workdir, so a run that cannot start leaves nothing behind.
  dataset.batch(0, request.batch_size)
  start = checkpoint.latest_step(request.workdir) if os.path.isdir(request.workdir) else None
  if start:
    print(f"resuming {request.workdir} from step {start}", flush=True)
  state = loop.train(trainer, dataset, request, hooks=[_print_progress(request)])
  step = int(state.step)
  done = "finished" if step >= request.steps else "stopped (checkpoint saved)"
  skipped = getattr(dataset, "num_skipped", None)
  note = f"; skipped {skipped} unreadable image file(s)" if skipped is not None else ""
  print(f"{done} at step {step}/{request.steps} in {request.workdir}{note}", flush=True)


if __name__ == "__main__":
  common.run(main)
