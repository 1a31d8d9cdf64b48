"""fastaudio: the fast engine for Stable Audio checkpoints, on Triton kernels, FlashAttention and CUDA graphs."""
from setuptools import find_packages, setup

setup(
    name="fastaudio",
    version="0.2.0",
    description="The fast engine for Stable Audio checkpoints (Stable Audio Open 1.0 and Small, "
                "SA1.0-style models): text to 44.1 kHz stereo on GPUs and CPUs",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The top-level kernels/ folder is installed as fastaudio.kernels (works in editable installs).
    packages=find_packages(include=["fastaudio", "fastaudio.*"]) + ["fastaudio.kernels"],
    package_dir={"fastaudio.kernels": "kernels"},
    package_data={"fastaudio": ["assets/default/*", "recipes/small/*.json"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.6",
        "triton; platform_system == 'Linux'",
        "numpy",
        "safetensors",
        "soundfile",
        "tqdm",
        "tokenizers",
        "transformers",  # T5, the text encoder of Stable Audio Open
    ],
    extras_require={
        "test": ["pytest", "transformers", "diffusers", "einops", "einops-exts", "soxr", "scipy", "auraloss==0.4.0",
                 "torchsde", "torchdiffeq"],
        "train": ["soxr", "tensorboard", "scipy"],
        "gpu": ["flash-attn", "xformers"],
        "bench": ["matplotlib", "transformers"],
    },
    entry_points={"console_scripts": ["fastaudio=fastaudio.cli:main"]},
)
