"""jaxstyle: neural style transfer methods as pure JAX/Flax models."""

__version__ = "0.1.0"
