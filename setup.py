"""One distribution, one import namespace: graphir, graphir.backends, graphir.models,
graphir.tools (top-level folders mapped with package_dir); shaders ship as package data."""

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the native cpu backend; without a working C compiler, say so and install the rest
    (graphir then runs on the NumPy reference, and `graphir ops` reports cpu as not built)."""

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - any compiler/linker failure
            print(f"\ngraphir: WARNING: the native cpu backend ({ext.name}) could not be compiled: {e}\n"
                  "graphir: install a C compiler (e.g. apt install gcc) and reinstall; until then the 'cpu' "
                  "backend falls back to the NumPy reference ('ref').\n")  # fmt: skip

PACKAGES = {
    "graphir": "graphir",
    "graphir.compile": "graphir/compile",
    "graphir.parity": "graphir/parity",
    "graphir.backends": "backends",
    "graphir.backends.cpu": "backends/cpu",
    "graphir.backends.ref": "backends/ref",
    "graphir.backends.opencl": "backends/opencl",
    "graphir.backends.vulkan": "backends/vulkan",
    "graphir.models": "models",
    "graphir.models.memory": "models/memory",
    "graphir.models.archs": "models/archs",
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
        "graphir.shaders": ["vulkan/*.comp", "vulkan/*.glsl", "opencl/*.cl", "opencl/*.h", "cuda/*.cu", "cuda/*.cuh",
                            "cpu/*.c", "cpu/*.h"]
    },
    # NOTE: `import graphir` needs only numpy; the rest is imported on first use. gguf (GGUF files and
    # the block-format oracle) and tokenizers (exact BPE from the GGUF vocabulary, models/tokenizer.py)
    # run a GGUF model; jinja2 renders a GGUF's `tokenizer.chat_template` (a Jinja2 template by the
    # format's definition, what llama.cpp's --jinja and HF's apply_chat_template render: models/chat.py);
    # tqdm draws the progress bars of long work (graphir/progress.py); hypothesis drives `graphir
    # parity`, a user-facing tool (the parity cases are hypothesis strategies, graphir/parity/).
    install_requires=["numpy>=1.26", "gguf>=0.10", "tokenizers>=0.20", "cffi>=1.16", "jinja2>=3.1", "tqdm>=4.66",
                      "hypothesis>=6.100"],
    extras_require={
        "test": ["pytest>=8"],
        "opencl": ["pyopencl>=2024.1"],
        "cuda": ["pycuda>=2024.1"],
        "dev": ["ruff"],
        # tools/train_tiny only; pinned: an unpinned torch pulls several GB of CUDA packages
        "train": ["torch==2.13.0"],
    },
    setup_requires=["cffi>=1.16"],
    cffi_modules=["backends/cpu/build.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
    entry_points={"console_scripts": ["graphir=graphir.tools.cli:main"]},
)
