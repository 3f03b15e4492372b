"""One module (or small package) per paper.

Optimisation methods (`gatys`, `histogram`) offer `stylize(content, styles, config, loss_net, ...)`
and run on `jaxstyle.optimize`; feed-forward methods (`johnson`, `msgnet`, `stylebank`, `adain`,
`magenta`, `tspr`) offer a `Trainer`, `load(checkpoint)` and `stylize(params, content, ...)`. Every
method also implements the launcher entry points of `jaxstyle.api` (`run_stylize`, and
`make_trainer` when it trains). Methods import `nn`, `losses`, `vgg`, `train` and `data`, never each
other, so nothing is imported here: `jaxstyle.api.get_method` loads the one module a run needs.
"""
