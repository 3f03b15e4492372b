"""The shared training loop with a toy trainer: learning, sharding, compile-once, guard, resume."""
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _toy_trainer as toy
from jaxstyle.errors import CheckpointError, TrainingError
from jaxstyle.train import checkpoint
from jaxstyle.train import loop
from jaxstyle.train import sharding
from jaxstyle.train.state import TrainState, clip_gradients


@pytest.fixture(autouse=True, scope="module")
def _compile_cache(tmp_path_factory):
  """Every `train` call jits afresh; a persistent cache lets identical programs compile once."""
  yield from toy.compile_cache(tmp_path_factory.getbasetemp() / "jax_cache")


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


class _Recorder:
  """A hook keeping host copies of the params after every step (the state is donated next)."""

  def __init__(self):
    self.params = {}
    self.metrics = {}

  def __call__(self, step, state, metrics):
    self.params[step] = _host(state.params)
    self.metrics[step] = _host(metrics)


def test_loss_falls_compiles_once_and_writes_workdir(tmp_path):
  trainer = toy.ToyTrainer()
  rec = _Recorder()
  state = loop.train(trainer, toy.NoiseImages(), toy.request(tmp_path, steps=30, log_every=10,
                                                              summary_every=15), hooks=[rec])
  losses = [float(rec.metrics[s]["loss"]) for s in sorted(rec.metrics)]
  assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:3])
  assert trainer.traces == 1  # steady state: one trace for 30 steps, saves and summaries included
  assert int(state.step) == 30
  assert float(state.extra["seen"]) == 30 * 8
  assert checkpoint.latest_step(tmp_path) == 30
  config = checkpoint.load_config(tmp_path)
  assert config["method"] == "toy" and config["config"] == {"channels": 4}
  assert config["train"]["steps"] == 30
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [10, 20, 30]
  assert rows[-1]["loss"] < rows[0]["loss"] and rows[0]["images_per_sec"] > 0
  assert os.listdir(tmp_path / "summaries")
  # load_params gives the trained params without the optimiser state.
  loaded = checkpoint.load_params(tmp_path)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, _host(state.params))


def test_eight_devices_match_one_device(tmp_path):
  assert jax.device_count() == 8
  states = []
  for n in (8, 1):
    req = toy.request(tmp_path / f"d{n}", steps=6, batch_size=8)
    states.append(loop.train(toy.ToyTrainer(), toy.NoiseImages(), req, devices=jax.devices()[:n]))
  assert states[0].params["params"]["Conv_0"]["kernel"].sharding.num_devices == 8
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         _host(states[0].params), _host(states[1].params))


def test_mesh_uses_largest_divisor_of_the_batch():
  assert sharding.make_mesh(8).shape == {"data": 8}
  assert sharding.make_mesh(6).shape == {"data": 6}
  assert sharding.make_mesh(12).shape == {"data": 6}
  assert sharding.make_mesh(7).shape == {"data": 7}
  assert sharding.make_mesh(9).shape == {"data": 3}
  batch = sharding.shard_batch({"image": np.zeros((12, 4, 4, 3), np.float32)}, sharding.make_mesh(12))
  assert batch["image"].sharding.shard_shape((12, 4, 4, 3)) == (2, 4, 4, 3)


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
  rec = _Recorder()
  req = toy.request(tmp_path, steps=5, log_every=5)
  state = loop.train(toy.ToyTrainer(nan_steps=(2,)), toy.NoiseImages(), req, hooks=[rec])
  # Step index 2 (the third) is poisoned: its update is dropped, the next ones go on.
  jax.tree_util.tree_map(np.testing.assert_array_equal, rec.params[3], rec.params[2])
  assert not np.array_equal(rec.params[4]["params"]["Conv_0"]["kernel"],
                            rec.params[3]["params"]["Conv_0"]["kernel"])
  assert [float(rec.metrics[s]["nonfinite"]) for s in range(1, 6)] == [0, 0, 1, 0, 0]
  assert float(state.extra["seen"]) == 4 * 8  # extra is reverted with the params
  assert int(state.step) == 5
  row = json.loads(open(tmp_path / "metrics.jsonl").readline())
  assert row["nonfinite"] == 1 and np.isfinite(row["loss"])


def test_consecutive_nonfinite_steps_stop_training_without_nan_checkpoint(tmp_path):
  req = toy.request(tmp_path, steps=40, checkpoint_every=2, max_nonfinite=3)
  with pytest.raises(TrainingError, match="3 consecutive steps") as err:
    loop.train(toy.ToyTrainer(nan_steps=tuple(range(3, 40))), toy.NoiseImages(), req)
  assert "\n" not in str(err.value)
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps and max(steps) <= 6
  for s in steps:
    params = checkpoint.load_params(tmp_path, step=s)
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


def test_resume_after_sigterm_is_bit_identical(tmp_path):
  full_data = toy.NoiseImages()
  full = loop.train(toy.ToyTrainer(), full_data, toy.request(tmp_path / "full", steps=10,
                                                              checkpoint_every=4))

  def stop_at_6(step, state, metrics):
    if step == 6:
      os.kill(os.getpid(), signal.SIGTERM)

  first_data = toy.NoiseImages()
  part = loop.train(toy.ToyTrainer(), first_data,
                    toy.request(tmp_path / "resumed", steps=10, checkpoint_every=4),
                    hooks=[stop_at_6])
  assert int(part.step) == 6
  assert checkpoint.latest_step(tmp_path / "resumed") == 6
  second_data = toy.NoiseImages()
  resumed = loop.train(toy.ToyTrainer(), second_data,
                       toy.request(tmp_path / "resumed", steps=10, checkpoint_every=4))
  assert int(resumed.step) == 10
  jax.tree_util.tree_map(np.testing.assert_array_equal, _host(resumed.params), _host(full.params))
  jax.tree_util.tree_map(np.testing.assert_array_equal, _host(resumed.opt_state),
                         _host(full.opt_state))
  # Data order: batch 0 is read once more for init; training resumes at batch 6.
  assert full_data.requested == list(range(10))
  assert first_data.requested + second_data.requested[1:] == full_data.requested


def test_foreign_checkpoint_and_method_raise_checkpoint_error(tmp_path):
  loop.train(toy.ToyTrainer(channels=4), toy.NoiseImages(), toy.request(tmp_path, steps=2))
  with pytest.raises(CheckpointError, match="does not fit this model"):
    loop.train(toy.ToyTrainer(channels=6), toy.NoiseImages(), toy.request(tmp_path, steps=4))
  with pytest.raises(CheckpointError, match="holds a toy run"):
    loop.train(toy.ToyTrainer(), toy.NoiseImages(), toy.request(tmp_path, steps=4, method="other"))
  with pytest.raises(CheckpointError, match="no checkpoints"):
    checkpoint.load_params(tmp_path / "nowhere")
  with pytest.raises(CheckpointError, match="no config.json"):
    checkpoint.load_config(tmp_path / "nowhere")


def test_train_state_with_several_optimisers():
  params = {"gen": {"w": jnp.ones(3)}, "disc": {"w": jnp.ones(2)}}
  state = TrainState.create(params, {"gen": optax.sgd(0.1), "disc": optax.adam(0.5)})
  state = state.apply_gradients({"disc": {"w": jnp.full(2, 2.0)}})
  np.testing.assert_allclose(state.params["gen"]["w"], np.ones(3))  # untouched
  np.testing.assert_allclose(state.params["disc"]["w"], np.full(2, 0.5), rtol=1e-5)  # adam: lr*sign
  state = state.apply_gradients({"gen": {"w": jnp.full(3, 1.0)}})
  np.testing.assert_allclose(state.params["gen"]["w"], np.full(3, 0.9), rtol=1e-6)
  assert int(state.opt_state["disc"][0].count) == 1
  assert int(state.step) == 0  # the loop advances the step
  with pytest.raises(ValueError, match="same keys"):
    TrainState.create({"gen": {}}, {"gen": optax.sgd(0.1), "disc": optax.sgd(0.1)})
  # A jitted step over the dict-of-optimisers state keeps its structure.
  jitted = jax.jit(lambda s, g: s.apply_gradients(g))
  out = jitted(state, {"gen": {"w": jnp.zeros(3)}, "disc": {"w": jnp.zeros(2)}})
  assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(state)


def test_clip_gradients_bounds_each_optimisers_update():
  params = {"gen": {"w": jnp.zeros(4)}, "disc": {"w": jnp.zeros(2)}}
  state = clip_gradients(TrainState.create(params, {"gen": optax.sgd(1.0), "disc": optax.sgd(1.0)}),
                         0.5)
  state = state.apply_gradients({"gen": {"w": jnp.full(4, 10.0)}, "disc": {"w": jnp.full(2, 0.1)}})
  np.testing.assert_allclose(state.params["gen"]["w"], np.full(4, -0.25), rtol=1e-6)  # norm 20 -> 0.5
  np.testing.assert_allclose(state.params["disc"]["w"], np.full(2, -0.1), rtol=1e-6)  # under: as is
  single = TrainState.create({"w": jnp.zeros(3)}, optax.sgd(1.0))
  assert clip_gradients(single, 0.0) is single
  single = clip_gradients(single, 1.0).apply_gradients({"w": jnp.asarray([3.0, 0.0, 4.0])})
  np.testing.assert_allclose(single.params["w"], [-0.6, 0.0, -0.8], rtol=1e-6)


def test_loop_clips_gradients_and_resumes_with_them(tmp_path):
  state = loop.train(toy.ToyTrainer(), toy.NoiseImages(),
                     toy.request(tmp_path, steps=5, grad_clip_norm=1e-3))
  assert len(state.opt_state) == 2  # (clip_by_global_norm, adam)
  assert checkpoint.load_config(tmp_path)["train"]["grad_clip_norm"] == 1e-3
  again = loop.train(toy.ToyTrainer(), toy.NoiseImages(),
                     toy.request(tmp_path, steps=6, grad_clip_norm=1e-3))
  assert int(again.step) == 6


def test_compute_dtype_follows_mixed_precision(tmp_path):
  from jaxstyle.train import precision  # pylint: disable=g-import-not-at-top
  assert precision.compute_dtype(toy.request(tmp_path, mixed_precision=True)) == jnp.bfloat16
  assert precision.compute_dtype(toy.request(tmp_path)) == jnp.float32
  tree = precision.cast_floating({"w": jnp.ones(2), "i": jnp.ones(2, jnp.int32)}, jnp.bfloat16)
  assert tree["w"].dtype == jnp.bfloat16 and tree["i"].dtype == jnp.int32


def test_params_saved_on_eight_devices_load_on_one(tmp_path):
  """A model trained on a mesh must load for inference on a single-device machine."""
  state = loop.train(toy.ToyTrainer(), toy.NoiseImages(), toy.request(tmp_path, steps=2, batch_size=8))
  assert state.params["params"]["Conv_0"]["kernel"].sharding.num_devices == 8
  np.save(tmp_path / "want.npy", _host(state.params)["params"]["Conv_0"]["kernel"])
  script = ("import numpy as np, sys; from jaxstyle.train import checkpoint; "
            "p = checkpoint.load_params(sys.argv[1]); "
            "np.testing.assert_array_equal(p['params']['Conv_0']['kernel'], np.load(sys.argv[2])); "
            "print('ok')")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(tmp_path / "want.npy")],
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
