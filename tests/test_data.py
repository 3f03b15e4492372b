"""Image folders as deterministic batches: order, augmentation, bad files, labels, threads."""
import os

import numpy as np
import pytest
from PIL import Image

from jaxstyle import data
from jaxstyle.data import augment
from jaxstyle.errors import ConfigError


def _write(path, value, size=(12, 10)):
  """A solid image whose red channel identifies it (value/255), other channels a gradient."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  h, w = size
  img = np.zeros((h, w, 3), np.uint8)
  img[..., 0] = value
  img[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
  img[..., 2] = 128
  Image.fromarray(img).save(path)


def _ids(batch):
  return [int(round(v)) for v in batch["image"][:, :, :, 0].mean(axis=(1, 2)) * 255]


@pytest.fixture
def folder(tmp_path):
  for k in range(6):
    _write(str(tmp_path / "imgs" / f"sub{k % 2}" / f"im{k}.png"), 20 * (k + 1))
  return str(tmp_path / "imgs")


def test_batches_are_a_pure_function_of_seed_and_step(folder):
  a = data.ImageFolder(folder, 8, seed=3, num_workers=1)
  b = data.ImageFolder(folder, 8, seed=3, num_workers=1)
  later = b.batch(5, 4)  # out of order, fresh instance
  for step in (0, 1, 5):
    got = a.batch(step, 4)
    assert got["image"].shape == (4, 8, 8, 3) and got["image"].dtype == np.float32
    assert 0.0 <= got["image"].min() and got["image"].max() <= 1.0
  np.testing.assert_array_equal(a.batch(5, 4)["image"], later["image"])
  other = data.ImageFolder(folder, 8, seed=4, num_workers=1)
  assert not all(np.array_equal(other.batch(s, 4)["image"], a.batch(s, 4)["image"])
                 for s in range(3))


def test_each_epoch_is_a_permutation(folder):
  ds = data.ImageFolder(folder, 8, seed=0, num_workers=1)
  seen = [i for step in range(3) for i in _ids(ds.batch(step, 2))]  # 6 files = 1 epoch
  assert sorted(seen) == [20 * (k + 1) for k in range(6)]
  epoch2 = [i for step in range(3, 6) for i in _ids(ds.batch(step, 2))]
  assert sorted(epoch2) == sorted(seen) and epoch2 != seen  # reshuffled with (seed, epoch)


def test_crop_and_flip_are_windows_of_the_resized_image(tmp_path):
  rng = np.random.default_rng(0)
  src = (rng.uniform(size=(20, 30, 3)) * 255).astype(np.uint8)
  Image.fromarray(src).save(tmp_path / "a.png")
  ds = data.ImageFolder(str(tmp_path), 8, seed=1, load_size=10, num_workers=1)
  full = augment.resize_short_side(src.astype(np.float32) / 255, 10)
  assert full.shape[:2] == (10, 15)
  flips = set()
  for step in range(8):
    crop = ds.batch(step, 1)["image"][0]
    matches = [(t, l, f) for t in range(3) for l in range(8) for f in (False, True)
               if np.allclose((full[t:t + 8, l:l + 8, :][:, ::-1] if f else full[t:t + 8, l:l + 8]),
                              crop, atol=1e-6)]
    assert matches, f"step {step}: crop is not a window of the resized image"
    flips.add(matches[0][2])
  assert flips == {False, True}
  centre = data.ImageFolder(str(tmp_path), 8, seed=1, load_size=10, augment=False, num_workers=1)
  np.testing.assert_allclose(centre.batch(0, 1)["image"][0], full[1:9, 3:11], atol=1e-6)


def test_unreadable_files_are_skipped_and_counted(folder, caplog):
  with open(os.path.join(folder, "sub0", "corrupt.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
  open(os.path.join(folder, "sub1", "empty.jpg"), "wb").close()
  ds = data.ImageFolder(folder, 8, seed=0, num_workers=1)
  assert len(ds) == 8
  ids = [i for step in range(8) for i in _ids(ds.batch(step, 4))]  # 4 epochs
  assert ds.num_skipped == 2
  assert set(ids) == {20 * (k + 1) for k in range(6)}
  assert sum("skipping unreadable image" in r.getMessage() for r in caplog.records) == 2
  # Deterministic despite the skips: a fresh instance gives the same batches.
  again = data.ImageFolder(folder, 8, seed=0, num_workers=1)
  assert [i for step in range(8) for i in _ids(again.batch(step, 4))] == ids


def test_labels_come_from_first_level_subfolders(tmp_path):
  for cls, value in (("zebra", 200), ("apple", 40)):
    for k in range(3):
      _write(str(tmp_path / cls / "deeper" / f"{k}.png"), value)
  ds = data.ImageFolder(str(tmp_path), 8, seed=0, labels=True, num_workers=1)
  assert ds.class_names == ("apple", "zebra") and ds.num_classes == 2
  for step in range(3):
    b = ds.batch(step, 4)
    assert b["label"].dtype == np.int32
    assert [{40: 0, 200: 1}[i] for i in _ids(b)] == b["label"].tolist()
  _write(str(tmp_path / "loose.png"), 10)
  with pytest.raises(ConfigError, match="one sub-folder per class"):
    data.ImageFolder(str(tmp_path), 8, seed=0, labels=True)


def test_parallel_decoding_with_prefetch_equals_serial(folder):
  with open(os.path.join(folder, "bad.png"), "wb") as f:
    f.write(b"not an image")
  serial = data.ImageFolder(folder, 8, seed=7, load_size=9, num_workers=1)
  parallel = data.ImageFolder(folder, 8, seed=7, load_size=9, num_workers=4)
  try:
    for step in (0, 1, 2, 3, 7, 8):  # consecutive steps hit the prefetched batch, others not
      want, got = serial.batch(step, 5), parallel.batch(step, 5)
      np.testing.assert_array_equal(got["image"], want["image"])
  finally:
    parallel.close()
  assert parallel.num_skipped == serial.num_skipped == 1


def test_bad_folders_raise_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="no images"):
    data.ImageFolder(str(tmp_path), 8, seed=0)
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(ConfigError, match="no images"):
    data.ImageFolder(str(tmp_path), 8, seed=0)
  with pytest.raises(ConfigError, match="does not exist"):
    data.ImageFolder(str(tmp_path / "missing"), 8, seed=0)
  _write(str(tmp_path / "a.png"), 10)
  with pytest.raises(ConfigError, match="load_size"):
    data.ImageFolder(str(tmp_path), 8, seed=0, load_size=4)


def test_sample_images_need_no_data():
  ds = data.image_source(None, 16, seed=0, labels=True)
  b = ds.batch(0, 3)
  assert b["image"].shape == (3, 16, 16, 3) and b["label"].shape == (3,)
  assert b["image"].std() > 0.05  # real photos, not blank
  np.testing.assert_array_equal(ds.batch(4, 3)["image"], data.SampleImages(16, seed=0).batch(4, 3)["image"])
