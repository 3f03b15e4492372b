"""Bad and odd inputs to every launcher: a correct result, or `error: ...` + exit 2, never a crash.

Each case runs a launcher's real `main` through `launch.common.run` (the same path as `python
launch/<x>.py`) with its stdout/stderr captured at the file-descriptor level. Cases of one launcher
share one subprocess (`_launcher_cases.py` run as a script), so the JAX import and the compiled
programs are paid once; the training runs further down are separate processes. The loss network is a random
full-size VGG16 converted to msgpack (no download). Checked for every case: exit code; for errors,
stderr is exactly one `error: ...` line naming the problem; no Traceback; and the case's output
folder is unchanged (no partial file, no temp file, no new folder) or holds exactly the result.
"""
import os
import random
import signal
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from _launcher_cases import (DATA_WARNING, ROOT, check_error, check_ok, env_for, make_inputs,
                             reference_rgb, resized, run_each, snapshot, start_batch)
from _launcher_tables import (JOHNSON_TINY, checkpoint_tables, convert_table, stylize_table,
                              train_table)


# --------------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("bad_inputs"))
  p = make_inputs(d)
  p["dir"] = d
  # A training folder where five of eight "images" cannot be read (thin.png: too elongated).
  content = os.path.join(d, "in", "train_content")
  os.makedirs(os.path.join(content, "sub"))
  for name in ("rgb.png", "gray.png", "exif.jpg", "empty.png", "cut.png", "notes.jpg", "bomb.png",
               "thin.png"):
    target = os.path.join(content, "sub" if name.startswith("e") else "", name)
    with open(p[name], "rb") as src, open(target, "wb") as dst:
      dst.write(src.read())
  with open(os.path.join(content, "README.txt"), "w") as f:
    f.write("not an image suffix: ignored, not counted\n")
  p["train_content"], p["bad_in_train_content"] = content, 5
  p["train_style"] = os.path.join(d, "in", "train_style")
  os.makedirs(p["train_style"])
  Image.open(p["cmyk.jpg"]).convert("RGB").save(os.path.join(p["train_style"], "style.png"))
  return p


def train_args(p, workdir, steps):
  return [os.path.join(ROOT, "launch", "train.py")] + JOHNSON_TINY + [
      f"--steps={steps}", "--checkpoint_every=2", "--log_every=1", f"--workdir={workdir}",
      f"--content_dir={p['train_content']}", f"--style_dir={p['train_style']}",
      f"--weights={p['w16.msgpack']}"]


TRAIN_STEPS = 8


@pytest.fixture(scope="module")
def reference_run(inputs):
  """An uninterrupted tiny Johnson run on a folder with unreadable files; started at once."""
  workdir = os.path.join(inputs["dir"], "runs", "reference")
  proc = subprocess.Popen([sys.executable] + train_args(inputs, workdir, TRAIN_STEPS),
                          env=env_for(inputs["dir"]), cwd=inputs["dir"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  result = {}

  def wait():
    if not result:
      out, err = proc.communicate(timeout=900)
      result.update(rc=proc.returncode, stdout=out, stderr=err, workdir=workdir)
    return result
  yield wait
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def _check_all(table, results):
  failures = []
  for name, _, expected in table:
    result = results[name]
    if expected[0] == "error":
      failures.append(check_error(name, result, expected[1], expected[-1], snapshot(expected[2])))
      continue
    problem = check_ok(name, result)
    _, output, shape, ref = expected
    if problem is None and shape is None:
      from pretrained import converted  # pylint: disable=g-import-not-at-top
      _, depth, _ = converted.load(output)  # raises if the file is not a complete weights file
      leftovers = sorted(os.listdir(os.path.dirname(output)))
      if depth != 16 or leftovers != [os.path.basename(output)]:
        problem = f"{name}: VGG{depth} in {output}, next to {leftovers}"
    if problem is None and shape is not None:
      img = np.asarray(Image.open(output).convert("RGB"), np.float64) / 255.0
      leftovers = sorted(set(os.listdir(os.path.dirname(output))) - {os.path.basename(output)})
      if img.shape != shape:
        problem = f"{name}: output shape {img.shape}, expected {shape}"
      elif leftovers:
        problem = f"{name}: extra files next to the output: {leftovers}"
      elif ref is not None:
        # 2 Adam steps at lr 1e-6 leave the content: the output shows how the file was decoded.
        err = np.abs(img - resized(reference_rgb(ref), shape[:2])).mean()
        if err > 0.01:
          problem = f"{name}: output differs from the decoded content by {err:.3f} on average"
    failures.append(problem)
  return [f for f in failures if f]


def _with_snapshots(table, cwd):
  """`table` rows with the watched path's snapshot taken now (before the run) appended."""
  rows = []
  for name, args, expected in table:
    if expected[0] == "error":
      expected = expected + (snapshot(expected[2]),)
    rows.append((name, args, expected))
  return rows, {name: {"args": args, "cwd": cwd} for name, args, _ in rows}


def test_every_bad_input_fails_cleanly_and_odd_inputs_work(inputs, reference_run):
  d = inputs["dir"]
  tables, waits = {}, {}
  for launcher, make in (("stylize", stylize_table), ("train", train_table),
                         ("convert", convert_table)):
    tables[launcher], cases = _with_snapshots(list(make(inputs, d)), d)
    waits[launcher] = start_batch(launcher, cases, d)
  assert sum(len(t) for t in tables.values()) >= 60
  failures = []
  for launcher, wait in waits.items():
    failures += _check_all(tables[launcher], wait())

  # Checkpoint cases need the trained workdir; it must not change under them either. They run as
  # separate processes: orbax can still print at interpreter exit.
  run = reference_run()
  assert run["rc"] == 0, run["stderr"][-3000:]
  rows = list(checkpoint_tables(inputs, d, run["workdir"]))
  before = snapshot(run["workdir"])
  for launcher in ("stylize", "train"):
    table, cases = _with_snapshots([r[1:] for r in rows if r[0] == launcher], d)
    failures += _check_all(table, run_each(launcher, cases, d))
  assert snapshot(run["workdir"]) == before
  cache = os.path.join(d, "cache")
  leftovers = [f for f in (os.listdir(cache) if os.path.isdir(cache) else []) if "tmp" in f]
  assert not leftovers, leftovers
  assert not failures, "\n".join(failures)


def test_training_skips_unreadable_files_and_reports_them(inputs, reference_run):
  run = reference_run()
  assert run["rc"] == 0, run["stderr"][-3000:]
  assert "Traceback" not in run["stderr"]
  last = run["stdout"].strip().splitlines()[-1]
  assert last.startswith(f"finished at step {TRAIN_STEPS}/{TRAIN_STEPS}"), run["stdout"]
  assert last.endswith(f"skipped {inputs['bad_in_train_content']} unreadable image file(s)"), last
  # Each bad file is warned about once; stderr holds nothing else (no orbax/absl INFO noise).
  lines = [l for l in run["stderr"].splitlines() if l.strip()]
  assert len(lines) == inputs["bad_in_train_content"], run["stderr"]
  assert all(DATA_WARNING in l for l in lines), run["stderr"]


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_params(inputs, reference_run):
  from jaxstyle.train import checkpoint  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(inputs["dir"], "runs", "killed")
  args = [sys.executable] + train_args(inputs, workdir, TRAIN_STEPS)
  env = env_for(inputs["dir"])
  kill_at = random.randint(3, TRAIN_STEPS - 2)
  proc = subprocess.Popen(args, env=env, cwd=inputs["dir"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  try:
    for line in proc.stdout:
      if line.startswith(f"step {kill_at}/"):
        proc.send_signal(signal.SIGKILL)
        break
    else:
      raise AssertionError(f"the run ended (rc={proc.wait()}) before step {kill_at}")
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
  resumed_from = checkpoint.latest_step(workdir)
  proc = subprocess.run(args, env=env, cwd=inputs["dir"], capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  if resumed_from:
    assert f"resuming {workdir} from step {resumed_from}" in proc.stdout, proc.stdout
  assert f"finished at step {TRAIN_STEPS}/{TRAIN_STEPS}" in proc.stdout, proc.stdout

  run = reference_run()
  assert run["rc"] == 0, run["stderr"][-3000:]
  assert checkpoint.latest_step(workdir) == checkpoint.latest_step(run["workdir"]) == TRAIN_STEPS
  want = checkpoint.load_params(run["workdir"])
  got = checkpoint.load_params(workdir)
  flat_want = jax.tree_util.tree_leaves_with_path(want)
  flat_got = jax.tree_util.tree_leaves_with_path(got)
  assert [k for k, _ in flat_got] == [k for k, _ in flat_want]
  for (path, a), (_, b) in zip(flat_want, flat_got):
    assert a.dtype == b.dtype and np.array_equal(a, b), (
        f"{jax.tree_util.keystr(path)} differs after a SIGKILL at step {kill_at} "
        f"(resumed from {resumed_from})")


def test_resume_with_other_model_settings_keeps_the_run_config(inputs, reference_run):
  run = reference_run()
  assert run["rc"] == 0, run["stderr"][-3000:]
  workdir = os.path.join(inputs["dir"], "runs", "changed_settings")
  subprocess.run(["cp", "-a", run["workdir"], workdir], check=True)
  config = os.path.join(workdir, "config.json")
  with open(config) as f:
    before = f.read()
  args = train_args(inputs, workdir, TRAIN_STEPS) + ["--set=width=0.25"]
  proc = subprocess.run([sys.executable] + args, env=env_for(inputs["dir"]), cwd=inputs["dir"],
                        capture_output=True, text=True, timeout=900)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 2 and last.startswith("error: checkpoint"), proc.stderr
  with open(config) as f:
    assert f.read() == before  # still describes the saved model, which stylize.py reads
