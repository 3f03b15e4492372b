"""Least-squares GAN losses (Mao et al. 2017) and their relativistic-average form (Jolicoeur-Martineau
2018, "RaLSGAN"), as TSPR trains its discriminator (nnaisense/conditional-style-transfer,
`GANAuxModel.disc_loss`).

Every function takes discriminator outputs of any shape (patch maps `[B, h, w, 1]`, logits `[B]`), or a
sequence of them for multi-scale / multi-head discriminators, whose losses are averaged.
"""
from typing import Sequence, Union

import jax
import jax.numpy as jnp

Array = jax.Array
Preds = Union[Array, Sequence[Array]]


def _pairs(real: Preds, fake: Preds):
  if isinstance(real, (list, tuple)) != isinstance(fake, (list, tuple)):
    raise ValueError("real and fake predictions must both be arrays or both be sequences")
  if not isinstance(real, (list, tuple)):
    return [(real, fake)]
  if len(real) != len(fake) or not real:
    raise ValueError(f"got {len(real)} real and {len(fake)} fake prediction heads")
  return list(zip(real, fake))


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def lsgan_d(real: Preds, fake: Preds) -> Array:
  """Discriminator LSGAN loss `0.5 * (mean((D(x) - 1)^2) + mean(D(G(z))^2))` (CycleGAN's weighting)."""
  losses = [0.5 * (jnp.mean(jnp.square(_f32(r) - 1.0)) + jnp.mean(jnp.square(_f32(f))))
            for r, f in _pairs(real, fake)]
  return sum(losses) / len(losses)


def lsgan_g(fake: Preds) -> Array:
  """Generator LSGAN loss `mean((D(G(z)) - 1)^2)`."""
  fakes = list(fake) if isinstance(fake, (list, tuple)) else [fake]
  return sum(jnp.mean(jnp.square(_f32(f) - 1.0)) for f in fakes) / len(fakes)


def _ralsgan(real: Preds, fake: Preds, sign: float) -> Array:
  losses = []
  for r, f in _pairs(real, fake):
    r, f = _f32(r), _f32(f)
    # Each side is judged relative to the *batch mean* of the other side.
    losses.append(0.5 * (jnp.mean(jnp.square(r - jnp.mean(f) - sign))
                         + jnp.mean(jnp.square(f - jnp.mean(r) + sign))))
  return sum(losses) / len(losses)


def ralsgan_d(real: Preds, fake: Preds) -> Array:
  """Relativistic-average LSGAN discriminator loss.

  `0.5 * (mean((D(x) - mean D(G(z)) - 1)^2) + mean((D(G(z)) - mean D(x) + 1)^2))`: real samples should
  score one above the average fake and fakes one below the average real (TSPR `disc_loss(mult=1)`).
  Pass `fake` with its gradient stopped when updating the discriminator only.
  """
  return _ralsgan(real, fake, 1.0)


def ralsgan_g(real: Preds, fake: Preds) -> Array:
  """Relativistic-average LSGAN generator loss: the discriminator loss with the targets swapped.

  `0.5 * (mean((D(x) - mean D(G(z)) + 1)^2) + mean((D(G(z)) - mean D(x) - 1)^2))`
  (TSPR `disc_loss(mult=-1)`); unlike the plain LSGAN, the real predictions enter the generator loss.
  """
  return _ralsgan(real, fake, -1.0)
