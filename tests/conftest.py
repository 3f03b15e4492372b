"""Test set-up: 8 virtual CPU devices for the data-parallel paths, small shared fixtures."""
import os

# Must happen before jax is imported anywhere: every test sees 8 CPU devices, so mesh and shard_map
# paths run here exactly as on a multi-chip host.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False,
                   help="run the long training runs (hundreds of steps) instead of their short form")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long run; the default suite runs a short version")


@pytest.fixture
def long_run(request):
  """True under --runslow: tests then train for hundreds of steps instead of a handful."""
  return request.config.getoption("--runslow")


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def smooth_image():
  """A deterministic 48x64 RGB image with structure (gradients + a disc), float32 in [0, 1]."""
  h, w = 48, 64
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  disc = ((y - 20) ** 2 + (x - 30) ** 2 < 150).astype(np.float32)
  img = np.stack([x / w, y / h, 0.5 + 0.4 * disc], axis=-1)
  return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture
def stripes_image():
  """A 48x64 style-like image: coloured diagonal stripes, float32 in [0, 1]."""
  h, w = 48, 64
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  s = 0.5 + 0.5 * np.sin((x + y) / 3.0)
  img = np.stack([s, 1 - s, 0.3 + 0.2 * np.cos(x / 5.0)], axis=-1)
  return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def pth_files(tmp_path_factory):
  """Random torchvision-layout VGG16/19 .pth files: ({depth: torch model}, {depth: path})."""
  vgg_files = pytest.importorskip("_vgg_files")  # needs torch
  return vgg_files.make_pth_files(tmp_path_factory.mktemp("pth"))


@pytest.fixture(scope="module")
def hed_file(tmp_path_factory):
  """A random HED-layout .h5 file and the jaxstyle params it should become: (path, params)."""
  vgg_files = pytest.importorskip("_vgg_files")
  path = str(tmp_path_factory.mktemp("h5") / "hed_like.weights.h5")
  return path, vgg_files.write_hed_h5(path)
