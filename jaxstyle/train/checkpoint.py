"""Checkpoints (orbax) and the run's `config.json`.

Layout of a workdir:
  config.json             method, its model config and the training request (written atomically)
  checkpoints/<step>/     orbax checkpoints of the TrainState (without `frozen`)
  summaries/              TensorBoard event files
  metrics.jsonl           one JSON line per logged step
"""
import json
import os
import tempfile
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxstyle.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"


def _checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def _savable(state: Any) -> Any:
  # `frozen` (loss-network weights) is rebuilt by init; saving it would copy VGG every time.
  return state.replace(frozen=None) if hasattr(state, "frozen") else state


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def all_finite(tree: Any) -> bool:
  """True when every floating leaf of `tree` is finite."""
  return bool(_all_finite(tree))


class Manager:
  """An orbax `CheckpointManager` over `workdir/checkpoints` that saves TrainStates.

  Saves are asynchronous (the arrays are copied to host before `save` returns, so the loop may
  donate them right away); `wait()` blocks until the last save is on disk.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = _checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as e:  # orbax raises many types for unreadable directories
      raise CheckpointError(f"cannot open checkpoints in {self.directory}: {_one_line(e)}") from None

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, state: Any, *, force: bool = True) -> bool:
    """Saves `state` at its `step`; refuses (returns False) a state with non-finite values."""
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return False
    savable = _savable(state)
    if not all_finite((savable.params, savable.opt_state, savable.extra)):
      logging.error("not saving step %d: the state holds non-finite values", step)
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(savable), force=force)

  def restore_latest(self, abstract_state: Any) -> Optional[Any]:
    """Restores the latest checkpoint into the structure, dtypes and shardings of `abstract_state`.

    Args:
      abstract_state: a TrainState of `jax.ShapeDtypeStruct`s (with shardings), e.g. from
        `jax.eval_shape(trainer.init, ...)`; its `frozen` part is ignored.
    Returns:
      The restored state (with `frozen=None`), or None when there is no checkpoint.
    Raises:
      CheckpointError: the checkpoint is corrupt or belongs to another model.
    """
    step = self.latest_step()
    if step is None:
      return None
    target = _savable(abstract_state)
    where = os.path.join(self.directory, str(step))
    # Shapes are compared from the metadata first: a mismatched restore makes tensorstore's reader
    # threads print tracebacks on their own, which would break the launchers' one-line errors.
    _check_shapes(_stored_shapes(self.directory, step), target, where)
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # unreadable files, or a structure the metadata did not show
      raise CheckpointError(
          f"checkpoint {where} cannot be restored (corrupt or incomplete, or saved by another "
          f"model; remove that step's folder to resume from an earlier one): "
          f"{_one_line(e)}") from None
    _check_shapes(restored, target, where)
    return restored

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _stored_shapes(directory: str, step: int) -> Optional[Any]:
  """The saved tree's array metadata (shapes), or None when it cannot be read cheaply."""
  try:
    reader = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler(),
                                   options=ocp.CheckpointManagerOptions(read_only=True))
    metadata = reader.item_metadata(step)
  except Exception:  # pylint: disable=broad-except  # the restore below reports it properly
    return None
  return getattr(metadata, "tree", metadata)


def _key(path) -> str:
  # Metadata trees hold dicts where the state holds named tuples: compare by bare names.
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _check_shapes(stored, target, where):
  # Orbax can silently reshape/cast on restore; a foreign checkpoint must fail instead.
  if stored is None:
    return
  stored_leaves = {_key(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(stored)}
  for path, t in jax.tree_util.tree_leaves_with_path(target):
    r = stored_leaves.get(_key(path))
    if r is not None and hasattr(r, "shape") and tuple(r.shape) != tuple(t.shape):
      raise CheckpointError(f"checkpoint {where} does not fit this model (saved with other settings): "
                            f"{jax.tree_util.keystr(path)} has shape {tuple(r.shape)}, "
                            f"expected {tuple(t.shape)}")


def _one_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return (text[0] if text else type(e).__name__)[:300]


def latest_step(workdir: str) -> Optional[int]:
  """The step of the newest complete checkpoint in `workdir`, or None."""
  if not os.path.isdir(_checkpoint_dir(workdir)):
    return None
  return ocp.CheckpointManager(_checkpoint_dir(workdir),
                               options=ocp.CheckpointManagerOptions(read_only=True)).latest_step()


def save(workdir: str, state: Any, *, keep: int = 3) -> bool:
  """Saves `state` synchronously into `workdir/checkpoints` (see `Manager` for the loop's use)."""
  manager = Manager(workdir, keep=keep, async_save=False)
  try:
    return manager.save(state)
  finally:
    manager.close()


def restore_latest(workdir: str, abstract_state: Any) -> Optional[Any]:
  """Restores the newest checkpoint of `workdir` into `abstract_state`'s structure, or None."""
  manager = Manager(workdir, async_save=False)
  try:
    return manager.restore_latest(abstract_state)
  finally:
    manager.close()


def load_params(workdir: str, *, step: Optional[int] = None, with_extra: bool = False) -> Any:
  """Loads trained parameters for inference, without the optimiser state.

  Args:
    workdir: a training workdir (or its `checkpoints` folder).
    step: which checkpoint; default the newest.
    with_extra: also return `extra` (batch statistics, ...).
  Returns:
    `params` as a pytree of NumPy arrays (nested dicts), or `(params, extra)`.
  Raises:
    CheckpointError: no checkpoint, or it cannot be read.
  """
  directory = _checkpoint_dir(workdir)
  if os.path.basename(os.path.normpath(workdir)) == CHECKPOINT_DIR:
    directory = os.path.abspath(workdir)
  if not os.path.isdir(directory):
    raise CheckpointError(f"no checkpoints in {workdir}")
  try:
    manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler(),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoints in {workdir}")
    # The target is built from the saved shapes and placed on one local device: a model trained
    # on 8 devices (or a TPU pod slice) must load on a laptop, whatever topology saved it.
    metadata = manager.item_metadata(step)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        getattr(metadata, "tree", metadata))
    tree = manager.restore(step, args=ocp.args.StandardRestore(target))
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f"cannot read checkpoint in {directory}: {_one_line(e)}") from None
  if not isinstance(tree, dict) or "params" not in tree:
    raise CheckpointError(f"checkpoint in {directory} holds no params (not a jaxstyle checkpoint)")
  params = jax.tree_util.tree_map(np.asarray, tree["params"])
  if with_extra:
    return params, jax.tree_util.tree_map(np.asarray, tree.get("extra"))
  return params


def save_config(workdir: str, config: dict) -> str:
  """Writes `workdir/config.json` atomically (temporary file then `os.replace`)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".json", dir=workdir)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(config, f, indent=2, sort_keys=True, default=_json_default)
      f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the run's settings from other users
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def load_config(workdir: str) -> dict:
  """Reads `workdir/config.json`; CheckpointError when missing or unreadable."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f"{workdir} has no {CONFIG_FILE} (not a jaxstyle training workdir)")
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"cannot read {path}: {_one_line(e)}") from None
  if not isinstance(config, dict):
    raise CheckpointError(f"{path} is not a JSON object")
  return config


def load_method_config(workdir: str, method: str, *, key: str = "model") -> dict:
  """The trainer's saved settings (`config.json["config"]`) of a workdir trained with `method`.

  Raises:
    CheckpointError: no readable config.json, another method's workdir, or no `key` settings in it
      (the model settings every loader rebuilds its config dataclass from).
  """
  saved = load_config(workdir)
  if saved.get("method") != method:
    raise CheckpointError(f"{workdir} holds a {saved.get('method')!r} model, not {method}")
  info = saved.get("config")
  if not isinstance(info, dict) or not isinstance(info.get(key), dict):
    raise CheckpointError(f"{workdir}/{CONFIG_FILE} has no {method} model settings")
  return info


def _json_default(x):
  if isinstance(x, (np.generic,)):
    return x.item()
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, (set, frozenset)):
    return sorted(x)
  return str(x)
