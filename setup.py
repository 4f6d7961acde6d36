"""One distribution, one import namespace: graphir, graphir.backends, graphir.models,
graphir.tools (top-level folders mapped with package_dir); shaders ship as package data."""

from setuptools import setup

PACKAGES = {
    "graphir": "graphir",
    "graphir.compile": "graphir/compile",
    "graphir.parity": "graphir/parity",
    "graphir.backends": "backends",
    "graphir.backends.cpu": "backends/cpu",
    "graphir.backends.ref": "backends/ref",
    "graphir.backends.opencl": "backends/opencl",
    "graphir.models": "models",
    "graphir.tools": "tools",
    "graphir.shaders": "shaders",
}

setup(
    name="graphir",
    version="0.1.0",
    description="A compiled tensor graph IR mirroring ggml, with Qwen3.5 models from GGUF",
    python_requires=">=3.11",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={
        "graphir.models": ["data/*.txt", "data/*.gguf", "data/*.json", "data/*.md"],
        "graphir.shaders": ["vulkan/*.comp", "vulkan/*.glsl", "opencl/*.cl", "opencl/*.h", "cuda/*.cu", "cuda/*.cuh"]
    },
    # NOTE: `import graphir` needs only numpy; gguf (GGUF files and the block-format oracle) and
    # tokenizers (exact BPE from the GGUF vocabulary, see models/tokenizer.py) are imported by
    # graphir.models only, but the main job (running a GGUF model) needs both.
    install_requires=["numpy>=1.26", "gguf>=0.10", "tokenizers>=0.20"],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100"],
        "opencl": ["pyopencl>=2024.1"],
        "cuda": ["pycuda>=2024.1"],
        "dev": ["ruff"],
        # tools/train_tiny only; pinned: an unpinned torch pulls several GB of CUDA packages
        "train": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["graphir=graphir.tools.cli:main"]},
)
