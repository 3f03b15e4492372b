"""Deterministic batching shared by every image source.

Batch `step` holds the examples `step * B + i` of an endless sequence of epochs; each epoch is a
permutation of the items seeded by `(seed, epoch)`, and each example's crop/flip by
`(seed, step, i)`. A batch is therefore a pure function of `(seed, step, batch_size)`: a resumed
run needs only its step, and parallel decoding gives exactly the serial result.
"""
import concurrent.futures
import os
import threading
from typing import Dict, Optional

from absl import logging
import numpy as np

from jaxstyle.data import augment
from jaxstyle.errors import ConfigError, ImageError

MAX_ASPECT = 16  # long side / short side of a usable training image


class BatchedImages:
  """Base class: subclasses set `num_items` and implement `_load(item) -> [H, W, 3]`.

  Unreadable items (`_load` raising ImageError) are replaced by the next item of the same epoch
  permutation, counted once each in `num_skipped` and logged once each.
  """

  def __init__(self, image_size: int, *, seed: int, load_size: Optional[int] = None,
               labels: bool = False, augment: bool = True, num_workers: Optional[int] = None):
    if image_size < 1:
      raise ConfigError(f"image size must be positive, got {image_size}")
    load_size = image_size if load_size is None else load_size
    if load_size < image_size:
      raise ConfigError(f"load_size {load_size} is smaller than the crop size {image_size}")
    self.image_size = image_size
    self.load_size = load_size
    self.seed = int(seed)
    self.labels = labels
    self.augment = augment
    self.num_items = 0
    self._bad = set()
    self._perms = {}
    self._lock = threading.Lock()
    self._num_workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    self._pool = None
    self._prefetcher = None
    self._prefetched = None  # (step, batch_size, future)

  # -- to implement --------------------------------------------------------------------------
  def _load(self, item: int) -> np.ndarray:
    raise NotImplementedError

  def _label(self, item: int) -> int:
    return 0

  def _describe(self, item: int) -> str:
    return f"item {item}"

  # -- public ----------------------------------------------------------------------------------
  @property
  def num_skipped(self) -> int:
    """How many distinct unreadable items were found so far."""
    with self._lock:
      return len(self._bad)

  def __len__(self) -> int:
    return self.num_items

  def permutation(self, epoch: int) -> np.ndarray:
    """The item order of `epoch`, seeded by (seed, epoch)."""
    with self._lock:
      perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed & 0xFFFFFFFF, 0xE90C, epoch]).permutation(
          self.num_items)
      with self._lock:  # a batch spans at most two epochs (unless B > num_items): keep a few
        if len(self._perms) >= 4:
          self._perms.pop(min(self._perms))
        self._perms[epoch] = perm
    return perm

  def batch(self, step: int, batch_size: int) -> Dict[str, np.ndarray]:
    """Batch `step`: {'image': float32 [B, S, S, 3] in [0, 1], 'label': int32 [B] if labelled}.

    The next batch is decoded in the background meanwhile (one batch of prefetch).
    """
    pending, self._prefetched = self._prefetched, None
    if pending is not None and pending[:2] == (step, batch_size):
      out = pending[2].result()
    else:
      out = self._make_batch(step, batch_size)
    if self._num_workers > 1:
      if self._prefetcher is None:
        self._prefetcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prefetch")
      future = self._prefetcher.submit(self._make_batch, step + 1, batch_size)
      self._prefetched = (step + 1, batch_size, future)
    return out

  def close(self) -> None:
    """Stops the worker threads (the dataset still works afterwards, serially restarted)."""
    pending, self._prefetched = self._prefetched, None
    if pending is not None:
      pending[2].cancel()
    for pool in (self._prefetcher, self._pool):
      if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
    self._prefetcher = self._pool = None

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except  interpreter shutdown
      pass

  # -- internals -------------------------------------------------------------------------------
  def _make_batch(self, step: int, batch_size: int) -> Dict[str, np.ndarray]:
    jobs = range(batch_size)
    if self._num_workers > 1 and batch_size > 1:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self._num_workers,
                                                           thread_name_prefix="decode")
      examples = list(self._pool.map(lambda i: self._example(step, batch_size, i), jobs))
    else:
      examples = [self._example(step, batch_size, i) for i in jobs]
    out = {"image": np.stack([e[0] for e in examples])}
    if self.labels:
      out["label"] = np.array([e[1] for e in examples], np.int32)
    return out

  def _example(self, step: int, batch_size: int, i: int):
    index = step * batch_size + i
    epoch, pos = divmod(index, self.num_items)
    perm = self.permutation(epoch)
    for offset in range(self.num_items):
      item = int(perm[(pos + offset) % self.num_items])
      img = self._try_load(item)
      if img is not None:
        break
    else:
      where = getattr(self, "root", None)
      raise ImageError(f"none of the {self.num_items} images" + (f" in {where}" if where else "")
                       + " could be read")
    rng = augment.example_rng(self.seed, step, i) if self.augment else None
    return augment.prepare(img, self.image_size, self.load_size, rng), self._label(item)

  def _try_load(self, item: int) -> Optional[np.ndarray]:
    with self._lock:
      if item in self._bad:
        return None
    try:
      img = self._load(item)
      h, w = img.shape[:2]
      if max(h, w) > MAX_ASPECT * min(h, w):
        # Its short side would be scaled up to load_size: a 1x20000 strip becomes gigabytes.
        raise ImageError(f"a {w}x{h} image is too elongated to train on (over {MAX_ASPECT}:1)")
      return img
    except ImageError as e:
      with self._lock:
        new = item not in self._bad
        self._bad.add(item)
      if new:
        logging.warning("skipping unreadable image (%s): %s", self._describe(item), e)
      return None


