"""A real training process killed or stopped mid-run: resume must be exact, SIGTERM must save."""
import os
import random
import signal
import subprocess
import sys

import pytest

import _toy_trainer as toy
from jaxstyle.train import checkpoint
from jaxstyle.train import loop

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_toy_trainer.py")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  yield from toy.compile_cache(tmp_path_factory.getbasetemp() / "jax_cache")


def _start(workdir, cache, steps, checkpoint_every):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1", PYTHONUNBUFFERED="1")
  return subprocess.Popen(
      [sys.executable, SCRIPT, f"--workdir={workdir}", f"--steps={steps}",
       f"--checkpoint_every={checkpoint_every}"],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def _read_until_step(proc, step):
  for line in proc.stdout:
    if line.strip() == f"step {step}":
      return
  raise AssertionError(f"process ended (rc={proc.wait()}) before step {step}")


def test_sigkill_then_restart_matches_uninterrupted_run(tmp_path, cache_dir):
  steps, every = 16, 3
  reference = loop.train(toy.ToyTrainer(), toy.NoiseImages(),
                         toy.request(tmp_path / "ref", steps=steps, checkpoint_every=every))
  kill_at = random.randint(2 * every + 1, steps - 2)
  proc = _start(tmp_path / "run", cache_dir, steps, every)
  try:
    _read_until_step(proc, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  # Usually a checkpoint (step 3, 6, ...) is on disk; an async save cut short by the kill leaves
  # a temporary folder that the restart must ignore (and it then starts over): both must end
  # with the same parameters.
  resumed_from = checkpoint.latest_step(tmp_path / "run")
  proc = _start(tmp_path / "run", cache_dir, steps, every)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  final = [line.split() for line in out.splitlines() if line.startswith("final")]
  assert final == [["final", str(steps), toy.params_digest(reference.params)]], (
      f"killed at step {kill_at}, resumed from {resumed_from}:\n{out}")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, cache_dir):
  proc = _start(tmp_path, cache_dir, 10**6, 10**6)
  try:
    _read_until_step(proc, 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0
  final = [line.split() for line in out.splitlines() if line.startswith("final")]
  assert len(final) == 1
  stopped_at = int(final[0][1])
  assert 3 <= stopped_at < 10**6
  assert checkpoint.latest_step(tmp_path) == stopped_at
  params = checkpoint.load_params(tmp_path)
  assert toy.params_digest(params) == final[0][2]
