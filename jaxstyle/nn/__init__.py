"""Shared layers: padded/upsampling convolutions, instance norm, residual blocks.

Method-specific layers live in their own modules (`adaptive`, `bottleneck`, `comatch`,
`recombination`) and are imported from there.
"""
from jaxstyle.nn.conv import (ConvLayer, ConvTranspose, UpsampleConv, pad_spatial, per_sample_conv,
                              reflect_pad, upsample_nearest)
from jaxstyle.nn.norms import InstanceNorm, instance_norm, instance_stats
from jaxstyle.nn.residual import ResidualBlock
