"""TSPR loss compositions (official code `models/gan_aux_model.py`), batch-split invariant.

Naming follows the reference's forward pass for one training pair:
  inp_src = content photo A          dst_src = another photo (A's class)
  inp_tgt = painting B of class c    dst_tgt = another painting of class c (the peer / style image)
Feature dicts hold the encoder outputs 'content', 'style', 'middle'.

Every term is a mean of per-sample values, so averaging per-device values with `pmean` gives the
one-device value. The metric-learning hinge acts on the *batch mean* of the negative distances, so
with `axis_name` the distances are gathered over the data axis first. Relativistic-average LSGAN is
taken per image pair: the reference averages the opposite predictions over its per-GPU batch, which
held one pair in the authors' two-GPU, batch-2 runs.
"""
from typing import Dict, Optional

import jax
import jax.numpy as jnp

from jaxstyle.losses import adversarial
from jaxstyle.losses import metric

Array = jax.Array
Feats = Dict[str, Array]
sg = jax.lax.stop_gradient

# SmoothL1 summed over channels, averaged over positions: `[B, h, w, C] x2 -> [B]`.
latent_distance = metric.smooth_l1_distance


def mse(a: Array, b: Array) -> Array:
  """Mean squared error over everything (`torch.nn.MSELoss()`)."""
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


def pair_ralsgan(real_pred: Array, fake_pred: Array, discriminator: bool) -> Array:
  """Per-pair relativistic-average LSGAN: `[B, h, w, 1] x2 -> [B]` (the shared loss per sample)."""
  fn = adversarial.ralsgan_d if discriminator else adversarial.ralsgan_g
  return jax.vmap(fn)(real_pred, fake_pred)


def style_metric_loss(f: Dict[str, Feats], margin: float, axis_name: Optional[str] = None) -> Array:
  """Style codes of the same class together, of different classes at least `margin` apart (mean hinge).

  Positives: (dst_tgt, inp_tgt) paintings of one class, (dst_src, inp_src) photos. Negatives: the
  crossed pairs. The `inp_*` codes are targets (gradient stopped), as in the reference.
  """
  d = lambda a, b: latent_distance(f[a]["style"], sg(f[b]["style"]))
  pos = jnp.concatenate([d("dst_tgt", "inp_tgt"), d("dst_src", "inp_src")])
  neg = jnp.concatenate([d("dst_src", "inp_tgt"), d("dst_tgt", "inp_src")])
  if axis_name:  # the hinge needs the global batch mean; all_gather's transpose routes gradients back
    pos = jax.lax.all_gather(pos, axis_name, tiled=True)
    neg = jax.lax.all_gather(neg, axis_name, tiled=True)
  return metric.contrastive_margin_loss(pos, neg, margin, hinge="mean")


def content_latent_loss(f: Dict[str, Feats]) -> Array:
  """Content codes survive stylization and reconstruction: rec and rec_id re-encoded vs inp_src."""
  target = sg(f["inp_src"]["content"])
  return jnp.mean(jnp.concatenate([latent_distance(f["rec"]["content"], target),
                                   latent_distance(f["rec_id"]["content"], target)]))


def cycle_aux_loss(f: Dict[str, Feats]) -> Array:
  """Auxiliary-decoder latent cycle: re-encoded aux reconstructions vs the codes they came from."""
  terms = [("rec_id_aux", "inp_src", "content"), ("rec_id_aux", "inp_src", "style"),
           ("rec_style_id_aux", "dst_tgt", "style"), ("rec_id_aux", "inp_src", "middle"),
           ("rec_style_id_aux", "dst_tgt", "middle")]
  return sum(jnp.mean(latent_distance(f[a][k], sg(f[b][k]))) for a, b, k in terms) / len(terms)


def transfer_loss(f: Dict[str, Feats]) -> Array:
  """Stylized image re-encoded: content codes of the photo, style codes of the peer painting."""
  return 0.5 * (jnp.mean(latent_distance(f["rec"]["content"], sg(f["inp_src"]["content"])))
                + jnp.mean(latent_distance(f["rec"]["style"], sg(f["dst_tgt"]["style"]))))


def identity_loss(rec_a: Array, real_a: Array, rec_style: Array, style: Array) -> Array:
  """Reconstructions of the photo and of the peer painting (MSE, averaged)."""
  return 0.5 * (mse(rec_a, sg(real_a)) + mse(rec_style, sg(style)))
