"""The shared training loop: every feed-forward method trains through `train`.

    trainer, dataset = method.make_trainer(request)
    state = loop.train(trainer, dataset, request)

The loop owns the mesh, jit (once, with the state donated), step RNGs, the non-finite guard,
orbax checkpoints with automatic resume, SIGTERM/SIGINT save-and-exit, and summaries.
"""
import dataclasses
import os
import shutil
import signal
import threading
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import tqdm

from jaxstyle import xla_options
from jaxstyle.errors import CheckpointError, TrainingError
from jaxstyle.train import api
from jaxstyle.train import checkpoint
from jaxstyle.train import sharding
from jaxstyle.train import state as state_lib
from jaxstyle.train import step as step_lib
from jaxstyle.train import summaries as summaries_lib
from jaxstyle.train.state import TrainState, count_params

# hook(step, state, metrics): called on the host after each step (metrics still on device).
Hook = Callable[[int, TrainState, dict], None]


class _StopOnSignal:
  """Turns SIGTERM/SIGINT into a stop request: the loop finishes its step, saves and returns.

  A second SIGINT raises KeyboardInterrupt as usual (for a stuck save).
  """

  def __init__(self):
    self.received = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum
    logging.warning("received %s: saving a checkpoint after this step",
                    signal.Signals(signum).name)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


def _check_workdir(request) -> None:
  """Refuses a workdir that holds another method's run, before anything is written there."""
  path = os.path.join(request.workdir, checkpoint.CONFIG_FILE)
  if os.path.exists(path):
    old = checkpoint.load_config(request.workdir).get("method")
    if old not in (None, request.method):
      raise CheckpointError(f"workdir {request.workdir} holds a {old} run, not "
                            f"{request.method}; use another --workdir")


def _write_config(trainer, request) -> None:
  """Records how to rebuild the model; called only once the checkpoint (if any) fits it."""
  train = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)
           if f.name != "progress"} if dataclasses.is_dataclass(request) else {}
  config_dict = getattr(trainer, "config_dict", None)
  checkpoint.save_config(request.workdir, {
      "method": request.method, "config": config_dict() if config_dict else {}, "train": train})


def train(trainer: Any, dataset: Any, request: Any, *, hooks: Optional[Sequence[Hook]] = None,
          devices: Optional[Sequence[jax.Device]] = None) -> TrainState:
  """Trains `trainer` on `dataset` as `request` (a `jaxstyle.api.TrainRequest`) says.

  Resumes from the newest checkpoint in `request.workdir`; saves every `checkpoint_every`
  steps, at the end, and on SIGTERM/SIGINT (then returns early with the saved state).

  Args:
    trainer: implements `jaxstyle.train.api.Trainer`.
    dataset: has `batch(step, batch_size) -> dict` of host arrays, pure in `step`.
    request: workdir, steps, batch_size, seed, checkpoint/log/summary intervals, max_nonfinite,
      and optionally grad_clip_norm (> 0 clips every optimiser's gradient, `clip_gradients`).
    hooks: called as `hook(step, state, metrics)` after every step.
    devices: devices to train on (default: all).
  Returns:
    The final TrainState.
  Raises:
    TrainingError: `max_nonfinite` consecutive steps had non-finite losses/gradients.
    CheckpointError: the workdir's checkpoint belongs to another model.
  """
  api.check_trainer(trainer)
  _check_workdir(request)
  created = not os.path.exists(request.workdir)
  os.makedirs(request.workdir, exist_ok=True)
  started = []  # appended to once the state exists: from then on the workdir is a run's
  try:
    mesh = sharding.make_mesh(request.batch_size, devices)
    manager = checkpoint.Manager(request.workdir, keep=request.keep_checkpoints)
    writer = summaries_lib.Summaries(request.workdir)
    try:
      with jax.set_mesh(mesh), _StopOnSignal() as stop:
        return _run(trainer, dataset, request, mesh, manager, writer, list(hooks or ()), stop,
                    started)
    finally:
      writer.close()
      manager.close()
      close = getattr(dataset, "close", None)
      if close is not None:
        close()
  except BaseException:
    if created and not started:  # a run that could not start (e.g. too small images) leaves nothing
      shutil.rmtree(request.workdir, ignore_errors=True)
    raise


def init_leaves(init, key, batch, out_shardings=None):
  """`jit(init)` returning the state's leaves, with closed-over arrays passed as arguments.

  Trainers' `init` often closes over big constants (loss-network weights, a style image whose
  Grams it precomputes); baked into the executable, XLA would constant-fold the whole VGG pass
  at compile time (minutes). Hoisting them into arguments keeps the compile cheap.
  """
  closed = jax.make_jaxpr(lambda k, b: jax.tree_util.tree_leaves(init(k, b)))(key, batch)
  flat_args = jax.tree_util.tree_leaves((key, batch))

  def run(consts, args):
    return jax.core.eval_jaxpr(closed.jaxpr, consts, *args)

  return xla_options.jit(run, cpu_options=xla_options.RUN_ONCE, out_shardings=out_shardings)(
      list(closed.consts), flat_args)


def _run(trainer, dataset, request, mesh, manager, writer, hooks, stop, started) -> TrainState:
  bs = request.batch_size
  key = jax.random.key(request.seed)
  init_key, step_key = jax.random.split(key)
  batch0 = sharding.shard_batch(dataset.batch(0, bs), mesh)

  # Initialise by shape, then directly into the target shardings.
  clip = getattr(request, "grad_clip_norm", 0.0)
  init = lambda k, b: state_lib.clip_gradients(trainer.init(k, b), clip)
  abstract = jax.eval_shape(init, init_key, batch0)
  state_sh = sharding.state_shardings(trainer, abstract, mesh)
  abstract_sh = sharding.with_shardings(abstract, state_sh)
  restored = manager.restore_latest(abstract_sh)
  # Written after the restore succeeded, so a resume with other model settings, which fails the
  # restore, cannot leave a config.json that no longer describes the saved model.
  _write_config(trainer, request)
  has_frozen = bool(jax.tree_util.tree_leaves(abstract.frozen))
  if restored is None or has_frozen:
    # Leaves only: `init` builds a new optax `tx` (a static field) on every call, so the state's
    # structure is pinned to the abstract one and reused by the step, restore and saves.
    treedef = jax.tree_util.tree_structure(abstract)
    leaves = init_leaves(init, init_key, batch0, jax.tree_util.tree_leaves(state_sh))
    state = jax.tree_util.tree_unflatten(treedef, leaves)
  if restored is not None:
    # `frozen` is not checkpointed: it comes from the fresh init.
    state = restored.replace(frozen=state.frozen if has_frozen else abstract.frozen)
    logging.info("resumed from %s at step %d", manager.directory, int(state.step))
  else:
    logging.info("training from scratch: %d parameters", count_params(state.params))
  step = int(jax.device_get(state.step))
  started.append(step)

  traces = [0]

  def on_trace():
    traces[0] += 1
    if traces[0] > 1:  # shapes or shardings changed between steps: every retrace costs a compile
      logging.warning("train step traced %d times", traces[0])

  make_step = getattr(trainer, "make_step", None)
  step_fn = make_step(mesh) if make_step is not None else trainer.train_step
  rep = sharding.replicated(mesh)
  jitted = jax.jit(
      step_lib.guarded(step_fn, on_trace),
      in_shardings=(state_sh, sharding.batch_sharding(mesh), rep, rep),
      out_shardings=(state_sh, rep, rep), donate_argnums=(0,))
  sample = jax.jit(trainer.sample, out_shardings=rep)

  bad = jax.device_put(jnp.zeros((), jnp.int32), rep)
  pending_bad = None
  meter = summaries_lib.Meter(bs)
  saved_step = manager.latest_step()
  bar = tqdm.tqdm(total=request.steps, initial=step, unit="step", disable=None, leave=False)

  def check(bad_count, at_step):
    n = int(bad_count)
    if n >= request.max_nonfinite:
      raise TrainingError(
          f"{n} consecutive steps had a non-finite loss or parameters (up to step {at_step}); "
          f"lower the learning rate or check the data (last checkpoint: step {saved_step})")

  try:
    while step < request.steps and stop.received is None:
      batch = batch0 if step == 0 else sharding.shard_batch(dataset.batch(step, bs), mesh)
      state, metrics, bad = jitted(state, batch, step_key, bad)
      step += 1
      # Check the previous step's skip count while this one runs, so the host never waits.
      if pending_bad is not None:
        check(pending_bad, step - 1)
      pending_bad = bad
      meter.add(metrics)
      bar.update(1)
      for hook in hooks:
        hook(step, state, metrics)
      if step % request.log_every == 0 or step == request.steps:
        check(pending_bad, step)
        values = meter.summarize()
        summaries_lib.log_line(step, request.steps, values)
        writer.scalars(step, values)
        bar.set_postfix(loss=f"{values['loss']:.4g}")
      if step % request.summary_every == 0:
        writer.images(step, "samples", jax.device_get(sample(state, batch)))
        writer.flush()
      if step % request.checkpoint_every == 0:
        check(pending_bad, step)
        if manager.save(state):
          saved_step = step
    if pending_bad is not None:
      check(pending_bad, step)
  finally:
    bar.close()

  if saved_step != step and manager.save(state):
    saved_step = step
  manager.wait()
  if stop.received is not None:
    logging.warning("stopped by %s at step %d; checkpoint saved",
                    signal.Signals(stop.received).name, step)
  else:
    logging.info("finished at step %d (%s)", step, manager.directory)
  if traces[0]:
    logging.info("train step compiled %d time(s)", traces[0])
  return state
