"""Metric-learning losses for style codes (TSPR, Svoboda et al. 2020: style codes of the same painter
pulled together, different painters pushed apart by a margin).
"""
import jax
import jax.numpy as jnp

Array = jax.Array


def triplet_margin_loss(anchor: Array, positive: Array, negative: Array, margin: float = 1.0,
                        p: float = 2.0, eps: float = 1e-6) -> Array:
  """`mean(max(d(a, p) - d(a, n) + margin, 0))` with `d(x, y) = ||x - y + eps||_p` over the last axis.

  Same as `torch.nn.functional.triplet_margin_loss` (Balntas et al. 2016).

  Args:
    anchor, positive, negative: `[..., D]` embeddings.
    margin: how much closer the positive must be than the negative.
    p: norm degree.
    eps: added to the difference before the norm (keeps the gradient finite at zero distance).

  Returns:
    Scalar float32 loss.
  """
  a, pos, neg = (jnp.asarray(x, jnp.float32) for x in (anchor, positive, negative))
  d_pos = jnp.linalg.norm(a - pos + eps, ord=p, axis=-1)
  d_neg = jnp.linalg.norm(a - neg + eps, ord=p, axis=-1)
  return jnp.mean(jax.nn.relu(d_pos - d_neg + margin))


def pairwise_distances(embeddings: Array, eps: float = 1e-12) -> Array:
  """Euclidean distances `[B, B]` between rows of `[B, D]` embeddings (finite gradient at 0)."""
  e = jnp.asarray(embeddings, jnp.float32).reshape(embeddings.shape[0], -1)
  diff = e[:, None, :] - e[None, :, :]
  return jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1) + eps)


def _label_masks(labels: Array):
  labels = jnp.asarray(labels).reshape(-1)
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(labels.shape[0], dtype=bool)
  return same & ~eye, ~same


def batch_triplet_margin_loss(embeddings: Array, labels: Array, margin: float = 1.0) -> Array:
  """Batch-all triplet loss from labels: every valid (anchor, positive, negative) triple of the batch.

  `mean over {a != p, label_a == label_p, label_n != label_a} of max(d(a,p) - d(a,n) + margin, 0)`,
  with Euclidean distances over the flattened embeddings. Zero when the batch has no valid triple.

  Args:
    embeddings: `[B, ...]` embeddings (flattened per sample).
    labels: `[B]` integer labels (e.g. painter index).
    margin: triplet margin.

  Returns:
    Scalar float32 loss.
  """
  d = pairwise_distances(embeddings)
  pos, neg = _label_masks(labels)
  valid = pos[:, :, None] & neg[:, None, :]
  hinge = jax.nn.relu(d[:, :, None] - d[:, None, :] + margin)
  return jnp.sum(jnp.where(valid, hinge, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def contrastive_margin_loss(pos_dists: Array, neg_dists: Array, margin: float = 1.0,
                            hinge: str = "mean") -> Array:
  """Pull positive distances to 0, push negative ones beyond `margin`.

  hinge='mean' is TSPR's style-code loss (`GANAuxModel.backward_G_aux`):
  `mean(pos) + max(0, margin - mean(neg))`, the hinge on the *average* negative distance;
  hinge='pair' applies it to each negative: `mean(pos) + mean(max(0, margin - neg))`.

  Args:
    pos_dists: distances between codes that should match (any shape).
    neg_dists: distances between codes that should differ (any shape).
    margin: the negative margin.
    hinge: 'mean' or 'pair'.

  Returns:
    Scalar float32 loss.
  """
  pos = jnp.mean(jnp.asarray(pos_dists, jnp.float32))
  neg = jnp.asarray(neg_dists, jnp.float32)
  if hinge == "mean":
    return pos + jax.nn.relu(margin - jnp.mean(neg))
  if hinge == "pair":
    return pos + jnp.mean(jax.nn.relu(margin - neg))
  raise ValueError(f"hinge must be 'mean' or 'pair', got {hinge!r}")


def label_margin_loss(embeddings: Array, labels: Array, margin: float = 1.0,
                      hinge: str = "pair") -> Array:
  """Contrastive loss from labels: same-label pairs pulled together, different-label pairs pushed
  beyond `margin` (Euclidean distances over flattened `[B, ...]` embeddings; see
  `contrastive_margin_loss` for `hinge`). Terms with no pairs in the batch contribute 0."""
  d = pairwise_distances(embeddings)
  pos, neg = _label_masks(labels)
  pos_mean = jnp.sum(jnp.where(pos, d, 0.0)) / jnp.maximum(jnp.sum(pos), 1)
  if hinge == "mean":
    neg_mean = jnp.sum(jnp.where(neg, d, 0.0)) / jnp.maximum(jnp.sum(neg), 1)
    push = jnp.where(jnp.any(neg), jax.nn.relu(margin - neg_mean), 0.0)
  elif hinge == "pair":
    push = jnp.sum(jnp.where(neg, jax.nn.relu(margin - d), 0.0)) / jnp.maximum(jnp.sum(neg), 1)
  else:
    raise ValueError(f"hinge must be 'mean' or 'pair', got {hinge!r}")
  return pos_mean + push


def smooth_l1_distance(a: Array, b: Array, beta: float = 1.0) -> Array:
  """TSPR's code distance: Smooth-L1 summed over channels, averaged over positions, per sample.

  Args:
    a, b: `[B, ..., C]` codes (broadcastable; e.g. a style code `[1, 1, 1, C]` against `[B, h, w, C]`).
    beta: the L2-to-L1 transition (PyTorch `SmoothL1Loss` default 1).

  Returns:
    `[B]` float32 distances.
  """
  diff = jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))
  sl1 = jnp.where(diff < beta, 0.5 * jnp.square(diff) / beta, diff - 0.5 * beta)
  per_pos = jnp.sum(sl1, axis=-1)
  return jnp.mean(per_pos.reshape(per_pos.shape[0], -1), axis=-1)
