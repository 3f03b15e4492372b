"""The benchmark: a tiny end-to-end run, the PyTorch twins against the Flax models, the refusal to
time a twin that disagrees, and the report files."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import xla_options
from jaxstyle.benchmark import report
from jaxstyle.benchmark import runner
from jaxstyle.benchmark.case import Case, TorchTwin
from jaxstyle.errors import ConfigError

torch = pytest.importorskip("torch")
from jaxstyle.benchmark import torch_models as tm  # noqa: E402  (needs torch)


def test_tiny_run_writes_json_csv_and_passes_torch_check(tmp_path):
  config = runner.BenchmarkConfig(methods=("johnson",), resolutions=(32,), batch_sizes=(1,),
                                  repeats=1, warmup=0, rounds=1, torch_modes=("eager",),
                                  kinds=("inference",))
  result = runner.run(config, log=lambda msg: None)
  paths = report.write(result, str(tmp_path / "bench.json"))
  with open(paths[0]) as f:
    data = json.load(f)
  env = data["environment"]
  assert env["torch_threads"] == env["cpu_threads"] == torch.get_num_threads()
  (row,) = data["results"]
  assert "error" not in row and "torch_error" not in row, row
  assert (row["case"], row["resolution"], row["batch"], row["unit"]) == (
      "johnson/inference", 32, 1, "images/s")
  assert row["torch_check"]["ok"] and row["torch_check"]["max_err"] <= row["torch_check"]["tolerance"]
  assert row["compiler_options"] == xla_options.SMALL_DOTS  # what johnson.inference compiles with
  jax_row = row["jax"]
  for key in ("throughput", "seconds", "ms_per_image", "compile_seconds", "flops", "xla_flops",
              "flops_per_second", "xla_bytes"):
    assert jax_row[key] is not None and jax_row[key] > 0, key
  assert jax_row["throughput"] == pytest.approx(1.0 / jax_row["seconds"])
  for side in (jax_row, row["torch_eager"]):  # host cost of the timed calls (Linux: getrusage)
    assert side["page_faults_per_call"] >= 0 and side["system_seconds_per_call"] >= 0
  assert set(env["host_memory"]) == {"retain", "single_arena", "cpu_async_dispatch"}
  assert row["ratio_eager"] == pytest.approx(row["torch_eager"]["seconds"] / jax_row["seconds"])
  with open(paths[1]) as f:
    header = f.readline().strip().split(",")
  assert {"case", "jax_throughput", "torch_eager_throughput", "ratio_eager"} <= set(header)
  for key in ("speed_probe", "speed_probe_end"):  # the machine's speed at start and end
    assert env[key]["size"] == 512 and env[key]["gflops"] > 0 and env[key]["gbps"] > 0
  table = report.format_table(data)
  assert "johnson/inference" in table and "speed probe: 512^3 float32 matmul " in table
  assert env["gpu_reflect_padding"] == "pass" and "reflection padding" not in table
  gpu_run = dict(data, environment=dict(env, platform="gpu", gpu_reflect_padding="border"))
  assert "reflection padding: convolved zero-padded" in report.format_table(gpu_run)
  png = report.plot(data, str(tmp_path / "bench.png"), log=lambda msg: None)
  assert os.path.getsize(png) > 0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's dispatch")
def test_launcher_runs_jax_calls_synchronously_on_cpu(tmp_path):
  out = tmp_path / "bench.json"
  launcher = os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch", "benchmark.py")
  done = subprocess.run(
      [sys.executable, launcher, "--methods=johnson", "--kinds=inference", "--resolutions=16",
       "--torch=none", "--width=0.125", "--repeats=1", "--rounds=1", "--warmup=0",
       "--gpu_reflect_padding=border", f"--output={out}"], capture_output=True, text=True,
      check=True)
  env = json.loads(out.read_text())["environment"]
  assert env["host_memory"] == {"retain": True, "single_arena": False, "cpu_async_dispatch": False}
  assert env["gpu_reflect_padding"] == "border"  # recorded; CPU programs ignore it
  assert "freed host memory retained (both sides); JAX calls run synchronously" in done.stdout


def test_twins_run_where_jax_runs():
  expected = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  assert tm.device().type == expected


def test_cpu_only_twins_refuse_beside_a_gpu(monkeypatch):
  from jaxstyle.benchmark import torch_train  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tm, "device", lambda: torch.device("cuda"))
  with pytest.raises(NotImplementedError, match="CPU only"):
    torch_train.train_twin(None, None, None, 1e-3)


def test_twin_that_disagrees_is_not_timed():
  x = jnp.ones((1, 4, 4, 3))
  calls = []
  twin = TorchTwin(make_fn=lambda compiled: (lambda: calls.append(1)),
                   check=lambda ref: (float(np.max(np.abs(np.asarray(ref) - 0.0))), 1e-3))
  case = Case("johnson", "inference", "", lambda x: 2.0 * x, (x,), 1, reference=lambda y: y,
              fresh_args=lambda: (x,), torch=lambda: twin)
  config = runner.BenchmarkConfig(repeats=1, warmup=0, rounds=1, torch_modes=("eager",))
  row = runner.run_case(case, config, 4, log=lambda msg: None)
  assert not row["torch_check"]["ok"] and "not timed" in row["torch_error"]
  assert calls == [] and "ratio_eager" not in row and row["jax"]["throughput"] > 0


def test_msgnet_twin_matches_flax():
  from jaxstyle.methods import msgnet
  config = msgnet.MSGNetConfig(ngf=8, stem_features=16, n_blocks=1)
  model = msgnet.MSGNet(config)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 16, 16, 3)), jnp.float32)
  # Jitted: op-by-op Flax on a loaded CPU compiles every primitive on its own.
  params = jax.jit(model.init)(jax.random.key(0), x[:1], jnp.zeros((1, 32, 32)))["params"]

  @jax.jit
  def forward(params, x):
    gram = model.apply({"params": params}, x[1:], method=msgnet.MSGNet.style_gram)
    return gram, model.apply({"params": params}, x, gram)

  gram, want = forward(params, x)
  net = tm.MSGNet(config.ngf, config.stem_features, config.n_blocks, config.pixel_scale,
                  getattr(config, "output_offset", 0.0)).load(params).eval()
  with torch.no_grad():
    got = tm.nhwc(net(tm.nchw(x), torch.from_numpy(np.array(gram))))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_profile_dir_traces_and_summarises_each_case(tmp_path):
  config = runner.BenchmarkConfig(methods=("johnson",), resolutions=(32,), batch_sizes=(1,),
                                  repeats=1, warmup=0, rounds=1, torch_modes=(),
                                  kinds=("inference",), width=0.25,
                                  profile_dir=str(tmp_path / "prof"), profile_calls=2)
  logs = []
  result = runner.run(config, log=logs.append)
  (row,) = result["results"]
  prof = row["profile"]
  assert os.path.isfile(prof["trace"]) and prof["trace"].startswith(str(tmp_path / "prof"))
  assert prof["total_ms"] > 0 and prof["ops"] and prof["kinds"]
  # Operations, not the runtime around them; times per call, largest first.
  names = [name for name, _, _ in prof["ops"]]
  assert not any(n.startswith("$") or "Thunk" in n for n in names), names
  assert [ms for _, ms, _ in prof["ops"]] == sorted((ms for _, ms, _ in prof["ops"]), reverse=True)
  assert sum(ms for _, ms in prof["kinds"]) <= prof["total_ms"] + 1e-6
  # Categories cover every operation: they add up to the total.
  assert sum(ms for _, ms in prof["categories"]) == pytest.approx(prof["total_ms"], abs=0.05)
  assert prof["launches"] >= len(prof["ops"]) / 2
  assert any("traced ops" in line for line in logs)
  paths = report.write(result, str(tmp_path / "bench.json"))
  with open(paths[1]) as f:
    header = f.readline().strip().split(",")
  assert "profile_total_ms" in header and "profile_ops" not in header


def test_adain_twin_matches_flax():
  from jaxstyle import vgg
  from jaxstyle.methods import adain
  from jaxstyle.methods.adain import model as adain_model
  from jaxstyle.nn import adaptive
  config = adain.AdaINConfig(width=0.125)
  encoder = adain_model.encoder_net(vgg.random_loss_net(0), config)
  rng = np.random.default_rng(1)
  c, s = (jnp.asarray(rng.uniform(size=(1, 16, 16, 3)), jnp.float32) for _ in range(2))
  decoder = adain_model.make_decoder(config, 16)

  @jax.jit
  def forward(c, s):
    f_c = encoder.features(c, ("relu4_1",))["relu4_1"]
    f_s = encoder.features(s, ("relu4_1",))["relu4_1"]
    params = decoder.init(jax.random.key(0), f_c)["params"]
    return params, decoder.apply({"params": params}, adaptive.adain(f_c, f_s, config.eps))

  params, want = forward(c, s)
  enc = tm.VGGFeatures(16, encoder.widths, encoder.pooling, encoder.padding).load(encoder.params)
  net = tm.AdaINNet(enc, tm.AdaINDecoder(config.channels(), 16, encoder.widths[3]).load(params))
  with torch.no_grad():
    got = tm.nhwc(net(tm.nchw(c), tm.nchw(s)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("changes", [{"methods": ("nope",)}, {"resolutions": (30,)},
                                     {"torch_modes": ("fast",)}, {"dtype": "float16"},
                                     {"kinds": ("predict",)}, {"cases": ("johnson/predict",)},
                                     {"cases": ("johnson",)}, {"width": 0.0}])
def test_bad_settings_raise_config_error(changes):
  with pytest.raises(ConfigError):
    runner.BenchmarkConfig(**changes).validate()
