"""Two-stage peer-regularized feature recombination (TSPR's "PeerRegularization" layer).

Svoboda, Anoosheh, Osendorfer, Masci, "Two-Stage Peer-Regularized Feature Recombination for Arbitrary
Image Style Transfer", CVPR 2020 (arXiv 1906.02913); official code nnaisense/conditional-style-transfer,
`models/layers.py` (`PeerRegularizationLayerAtt`, `PeerRegularizationLayerAttBidir`).

The latent code of an image is split into content codes `[B, H, W, Cc]` and style codes `[B, H, W, Cs]`.
Every latent position of the input image is a node of a graph whose other nodes are the positions of a
peer (style) image:

* Stage 1 (style recombination): each input position finds its `k` nearest peer positions by Euclidean
  distance on *content* codes, and its new style code is a graph-attention average of those peers'
  *style* codes.
* Stage 2 (content recombination, the "bidirectional" layer): the roles swap. Each input position,
  now carrying its new style code, finds its `k` nearest peers by distance on *style* codes and takes a
  graph-attention average of their *content* codes.

Graph attention follows the reference: a shared MLP `d -> d/2 -> d/4` (Linear, BatchNorm, ReLU twice)
embeds query and peer codes; two linear heads turn embeddings into scalar scores `a_i` (queries) and `b_j`
(peers); the edge score `a_i + b_j` goes through dropout, softplus, and a softmax over the `k`
neighbours only. The reference masks non-neighbours of a full `[N, M]` score matrix with -1e9, which
gives exactly zero weight in float32; here only the `k` neighbours are gathered, which is the same
function with `O(N k)` instead of `O(N M)` attention memory (the `[N, M]` distance matrix remains, and
is computed in query chunks to bound memory on large images).

Peers are per sample: content image `b` is recombined with the positions of peer image `b` (the
reference flattens its per-device batch, which was one pair per GPU in the authors' runs). Per-sample
peers make the layer independent of how a batch is split over devices.
"""
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstyle.errors import TooSmallError

Array = jax.Array

# Reference initialisation (CycleGAN `init_weights`, 'normal', gain 0.02) for Linear and Conv1d weights.
_INIT = nn.initializers.normal(stddev=0.02)


def squared_distances(queries: Array, keys: Array) -> Array:
  """Squared Euclidean distances `|q|^2 - 2 q.k + |k|^2`, as the reference's `PairwiseDistance`.

  Args:
    queries: `[N, C]`.
    keys: `[M, C]`.

  Returns:
    `[N, M]` float32 distances.
  """
  q = queries.astype(jnp.float32)
  k = keys.astype(jnp.float32)
  q2 = jnp.sum(q * q, axis=-1, keepdims=True)
  k2 = jnp.sum(k * k, axis=-1)
  return q2 - 2.0 * q @ k.T + k2[None, :]


def knn_indices(queries: Array, keys: Array, k: int, chunk: Optional[int] = None) -> Array:
  """Indices of the `k` nearest keys of every query (ascending distance), via `lax.top_k`.

  Args:
    queries: `[N, C]` query codes.
    keys: `[M, C]` peer codes; `M >= k`.
    k: number of neighbours.
    chunk: if set and `N > chunk`, the `[N, M]` distance matrix is built `chunk` rows at a time.

  Returns:
    `[N, k]` int32 indices into `keys`. Not differentiable (neighbour selection is discrete).
  """
  if keys.shape[0] < k:
    raise TooSmallError(f"the style image is too small: the kNN attention needs at least k={k} "
                        f"peer positions, got {keys.shape[0]}; use a larger style image or --size")
  queries = jax.lax.stop_gradient(queries)
  keys = jax.lax.stop_gradient(keys)

  def nearest(q):
    return jax.lax.top_k(-squared_distances(q, keys), k)[1]

  n = queries.shape[0]
  if chunk is None or n <= chunk:
    return nearest(queries)
  pad = (-n) % chunk
  padded = jnp.pad(queries, ((0, pad), (0, 0)))
  idx = jax.lax.map(nearest, padded.reshape(-1, chunk, queries.shape[-1]))
  return idx.reshape(-1, k)[:n]


def neighbour_attention(query_scores: Array, peer_scores: Array, idx: Array, values: Array,
                        dropout_rate: float = 0.0, key: Optional[Array] = None) -> Array:
  """Graph attention over each query's `k` neighbours (one sample).

  Args:
    query_scores: `[N]` scores `a_i` of the queries.
    peer_scores: `[M]` scores `b_j` of the peers.
    idx: `[N, k]` neighbour indices.
    values: `[M, D]` peer codes to recombine.
    dropout_rate: dropout on the edge scores before softplus (reference: 0.2 in training).
    key: PRNG key for dropout; no dropout when None.

  Returns:
    `[N, D]` recombined codes `sum_j softmax_j(softplus(a_i + b_j)) v_j`.
  """
  scores = query_scores[:, None] + peer_scores[idx]
  if key is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(key, 1.0 - dropout_rate, scores.shape)
    scores = jnp.where(keep, scores / (1.0 - dropout_rate), 0.0)
  weights = jax.nn.softmax(jax.nn.softplus(scores.astype(jnp.float32)), axis=-1)
  return jnp.einsum("nk,nkd->nd", weights.astype(values.dtype), values[idx])


class AttentionMLP(nn.Module):
  """The attention embedding `d -> d/2 -> d/4` (Linear, BatchNorm1d, ReLU twice) of the reference.

  BatchNorm statistics run over all positions of the (per-device) batch; `axis_name` syncs them across
  devices with `pmean` inside `shard_map`, so a batch split over devices normalises like one device.
  """
  momentum: float = 0.9   # PyTorch momentum 0.1
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """`[R, d]` codes -> `[R, d // 4]` embeddings."""
    d = x.shape[-1]
    for i, width in enumerate((d // 2, d // 4)):
      x = nn.Dense(width, kernel_init=_INIT, dtype=self.dtype, name=f"dense_{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon,
                       axis_name=self.axis_name if train else None, dtype=self.dtype,
                       name=f"bn_{i}")(x)
      x = nn.relu(x)
    return x


class PeerAttention(nn.Module):
  """One recombination stage: kNN on `query_codes` vs `peer_codes`, attention-average of `peer_values`."""
  k: int = 5
  dropout_rate: float = 0.2
  momentum: float = 0.9
  axis_name: Optional[str] = None
  chunk: Optional[int] = 4096
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query_codes: Array, peer_codes: Array, peer_values: Array, *, train: bool,
               dropout_keys: Optional[Array] = None) -> Array:
    """Recombines peer values for every query position.

    Args:
      query_codes: `[B, N, C]` codes of the input positions.
      peer_codes: `[B, M, C]` codes of the peer positions (same space as `query_codes`).
      peer_values: `[B, M, D]` what gets recombined.
      train: BatchNorm batch statistics (and running-average updates) and dropout when True.
      dropout_keys: `[B]` PRNG keys (one per sample); dropout is active when given and `train`.

    Returns:
      `[B, N, D]` recombined values.
    """
    b, n, c = query_codes.shape
    m = peer_codes.shape[1]
    idx = jax.vmap(lambda q, p: knn_indices(q, p, self.k, self.chunk))(query_codes, peer_codes)
    mlp = AttentionMLP(momentum=self.momentum, axis_name=self.axis_name, dtype=self.dtype, name="mlp")
    # Two BatchNorm passes, as in the reference: queries and peers are normalised as separate batches.
    h_query = mlp(query_codes.reshape(b * n, c), train)
    h_peer = mlp(peer_codes.reshape(b * m, c), train)
    a = nn.Dense(1, kernel_init=_INIT, dtype=self.dtype, name="query_score")(h_query).reshape(b, n)
    s = nn.Dense(1, kernel_init=_INIT, dtype=self.dtype, name="peer_score")(h_peer).reshape(b, m)
    rate = self.dropout_rate if (train and dropout_keys is not None) else 0.0
    if rate > 0.0:
      return jax.vmap(lambda *xs: neighbour_attention(*xs[:4], rate, xs[4]))(
          a, s, idx, peer_values, dropout_keys)
    return jax.vmap(neighbour_attention)(a, s, idx, peer_values)


class PeerRegularization(nn.Module):
  """Two-stage peer-regularized feature recombination (TSPR, Svoboda et al. 2020).

  Attributes:
    k: neighbours per position (reference `--knn=5`).
    dropout_rate: attention dropout (reference 0.2).
    bidirectional: stage 2 (content recombination) on, as the reference's `--peer_reg=bidir`; off is the
      one-stage `basic` layer.
    momentum: BatchNorm running-average momentum (flax convention).
    axis_name: mesh axis to sync BatchNorm statistics over (inside `shard_map`), or None.
    chunk: query rows per distance-matrix chunk.
  """
  k: int = 5
  dropout_rate: float = 0.2
  bidirectional: bool = True
  momentum: float = 0.9
  axis_name: Optional[str] = None
  chunk: Optional[int] = 4096
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, content: Array, style: Array, peer_content: Array, peer_style: Array, *,
               train: bool = False, recombine_content: bool = True, recombine_style: bool = True,
               dropout_keys: Optional[Array] = None) -> Tuple[Array, Array]:
    """Recombines the input's latent code from the peer's.

    Args:
      content: `[B, H, W, Cc]` content codes of the input image.
      style: `[B, H, W, Cs]` style codes of the input image.
      peer_content: `[B, h, w, Cc]` content codes of the peer (style) image.
      peer_style: `[B, h, w, Cs]` style codes of the peer image.
      train: batch statistics + dropout (training) or running statistics (inference).
      recombine_content: keep stage 2's output (the reference's `cont_transf`); False keeps `content`.
      recombine_style: keep stage 1's output (`style_transf`); False keeps `style`.
      dropout_keys: `[B]` per-sample PRNG keys; when None in training, drawn from the 'dropout' rng
        stream if one is given to `apply`, else no dropout.

    Returns:
      `(content', style')` with the input's shapes.
    """
    b, h, w, cc = content.shape
    cs = style.shape[-1]
    flat = lambda x: x.reshape(x.shape[0], -1, x.shape[-1])
    if train and self.dropout_rate > 0.0 and dropout_keys is None and self.has_rng("dropout"):
      dropout_keys = jax.random.split(self.make_rng("dropout"), b)
    keys = lambda stage: (None if dropout_keys is None
                          else jax.vmap(lambda kk: jax.random.fold_in(kk, stage))(dropout_keys))
    stage = lambda name: PeerAttention(k=self.k, dropout_rate=self.dropout_rate,
                                       momentum=self.momentum, axis_name=self.axis_name,
                                       chunk=self.chunk, dtype=self.dtype, name=name)
    new_style = stage("style_stage")(flat(content), flat(peer_content), flat(peer_style),
                                     train=train, dropout_keys=keys(1))
    new_content = flat(content)
    if self.bidirectional and (recombine_content or self.is_initializing()):
      new_content = stage("content_stage")(new_style, flat(peer_style), flat(peer_content),
                                           train=train, dropout_keys=keys(2))
    if not recombine_content:
      new_content = flat(content)
    if not recombine_style:
      new_style = flat(style)
    return new_content.reshape(b, h, w, cc), new_style.reshape(b, h, w, cs)
