"""Pretrained VGG weights: converters (Keras `.h5`, torchvision `.pth`) and the local weight cache.

  from pretrained import cache
  params, depth, convention = cache.load_params('hed-vgg16')

Most code wants `jaxstyle.vgg.load_loss_net` instead, which wraps the result in a `LossNet`.
"""
