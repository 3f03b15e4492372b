"""jaxstyle: neural style transfer methods as pure JAX/Flax models."""
import setuptools

setuptools.setup(
    name="jaxstyle",
    version="0.1.0",
    description="Neural style transfer in JAX/Flax: Gatys, histogram losses, Johnson, StyleBank, "
                "Magenta, AdaIN, MSG-Net and TSPR with jit-compiled train steps.",
    packages=setuptools.find_packages(include=["jaxstyle", "jaxstyle.*", "pretrained", "launch"]),
    python_requires=">=3.11",  # jax 0.10 needs 3.11+
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "numpy",
        "pillow",
        "absl-py",
        "h5py",
        "tqdm",
        "tensorboardX",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "scikit-image", "chex", "torch==2.13.0", "onnx>=1.16",
                 "onnxruntime>=1.18"],
        "torch": ["torch==2.13.0"],
        # importing the published Magenta weights; --export_onnx (onnxruntime checks the export)
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
    },
)
