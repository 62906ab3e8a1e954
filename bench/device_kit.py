"""What a GPU machine needs to check selftune's CUDA path, packed here and unpacked there.

The GPU machines this project is lent (see ``bench/gpu_check.sh``) are sent the working tree
only, at most 64 MiB of it, and reach no network. They hold PyTorch, transformers and PEFT but
not selftune's other dependencies, and the default model's 98 MB GGUF does not fit. So:

``python -m bench.device_kit prepare`` (here, with the network to the package index) writes
``.device-kit/`` (git-ignored): the wheels of the missing packages for the GPU machine's
Python (3.12), the versions installed here; the default model's tokenizer, saved; and its
config.

``python -m bench.device_kit model DIR`` (there) builds a model of the default model's shape
from that config, with random weights (seed 0). A training step's time does not depend on the
weights' values, so the throughput benchmark's tokens/s and speed-ups hold for the real model;
its losses and recall do not (every trainer starts from the same weights, so they still compare
the trainers with each other).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

KIT = Path(".device-kit")
# selftune's dependencies that the GPU machine's image lacks (its list: the device tool's
# KINDS.md), and PEFT and typing-extensions in the versions tested here. bitsandbytes (for NF4
# bases) is the bulk: 43 of about 52 MB.
MISSING = (
    "annotated-types",
    "bitsandbytes",
    "gguf",
    "peft",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "python-dotenv",
    "sqlalchemy",
    "typing-extensions",
    "typing-inspection",
)
# The GPU machine's Python, and the platform tags its wheels may carry (pip matches exactly).
GPU_PYTHON = "3.12"
MANYLINUX = (17, 24, 27, 28, 31, 34, 35)
PLATFORMS = [*(f"manylinux_2_{n}_x86_64" for n in MANYLINUX), "manylinux2014_x86_64"]
LIMIT_BYTES = 60 * 2**20  # the working tree travels with it: 64 MiB in all


def prepare(kit: Path, python: str = GPU_PYTHON) -> None:
    """Write the kit: wheels for ``python``, the default model's tokenizer and config."""
    from transformers import AutoConfig, AutoTokenizer

    from selftune.models.base import default_gguf_path

    if kit.exists():
        if not (kit / "wheels").is_dir():  # a folder of something else: not ours to delete
            raise SystemExit(f"{kit} exists and is not a device kit; name another with --kit")
        shutil.rmtree(kit)  # an older kit: remade whole, so no stale wheel travels with it
    wheels = kit / "wheels"
    wheels.mkdir(parents=True)
    pins = [_pinned(name) for name in MISSING]
    platforms = [flag for tag in PLATFORMS for flag in ("--platform", tag)]
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    binaries_for = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    subprocess.run([*download, *binaries_for, *platforms, "--dest", str(wheels), *pins], check=True)
    gguf = default_gguf_path()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(
        kit / "tokenizer"
    )
    AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(kit / "config")
    size = sum(path.stat().st_size for path in kit.rglob("*") if path.is_file())
    print(f"{kit}: {size / 2**20:.1f} MiB ({', '.join(pins)})")
    if size > LIMIT_BYTES:
        raise SystemExit(f"{kit} is over {LIMIT_BYTES / 2**20:.0f} MiB: it would not travel")


def _pinned(name: str) -> str:
    """The version installed here (tested with selftune), or the newest if none is."""
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:  # bitsandbytes: a CPU machine has no use for it
        return name


def build_model(kit: Path, folder: Path) -> None:
    """A model of the default model's shape, random weights (seed 0), with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(kit / "config")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(kit / "tokenizer").save_pretrained(folder)
    print(f"{folder}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.device_kit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kit", type=Path, default=KIT, help=f"the kit's folder ({KIT})")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare_command = commands.add_parser("prepare", help="write the kit here")
    prepare_command.add_argument(
        "--python", default=GPU_PYTHON, help=f"the Python the wheels are for ({GPU_PYTHON})"
    )
    model = commands.add_parser("model", help="build a default-shaped model with random weights")
    model.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.kit, args.python)
    else:
        build_model(args.kit, args.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
