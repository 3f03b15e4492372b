"""Style-transfer losses: content, Gram / mean-std style statistics, histogram, total variation,
adversarial (LSGAN, relativistic-average LSGAN) and metric learning. All batched and jit-safe.

The VGG perceptual loss of the feed-forward methods is in `jaxstyle.losses.perceptual`.
"""
from jaxstyle.losses.adversarial import lsgan_d, lsgan_g, ralsgan_d, ralsgan_g
from jaxstyle.losses.basic import content_loss, total_variation
from jaxstyle.losses.histogram import HistogramTarget, histogram_loss, histogram_match, histogram_target
from jaxstyle.losses.metric import (batch_triplet_margin_loss, contrastive_margin_loss, label_margin_loss,
                                    pairwise_distances, smooth_l1_distance, triplet_margin_loss)
from jaxstyle.losses.style import gram_loss, gram_matrix, mean_std, mean_std_loss, resize_mask
