"""fastaudio: Stable Audio 1.0 on Triton kernels, FlashAttention and CUDA graphs."""
from setuptools import find_packages, setup

setup(
    name="fastaudio",
    version="0.1.0",
    description="Fast Stable Audio 1.0: timing-conditioned latent diffusion for 44.1 kHz stereo audio",
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
    ],
    extras_require={
        "test": ["pytest", "transformers", "einops", "einops-exts", "soxr", "scipy", "auraloss==0.4.0",
                 "torchsde", "torchdiffeq"],
        "train": ["soxr", "tensorboard", "scipy"],
        "gpu": ["flash-attn", "xformers"],
        "bench": ["matplotlib", "transformers"],
    },
    entry_points={"console_scripts": ["fastaudio=fastaudio.cli:main"]},
)
