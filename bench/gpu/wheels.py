"""Gather the wheels `bench/gpu/run.sh` installs on a GPU machine that has Python and a CUDA torch but no package
index, into one folder to bring along (`carry`).

Fetched: the dependency closure of DeepSpeed, transformers and neox's own imports at the versions of
requirements/lock.txt, and liger-kernel at the `gpu` extra's pin, for the GPU machine's Python, less torch and
what a CUDA torch already brings (triton, nvidia-*). DeepSpeed ships no wheel: it is built here, pure Python
(DS_BUILD_OPS=0: its ops compile on first use there, none are needed by the checks).

    .venv/bin/python bench/gpu/wheels.py [--python-version 3.12] [--dest .gpu-wheels]
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# What the GPU runs import: the engine and its kernels, the transformers baseline, neox's configs and weights, and
# zstandard (neox.data's shard reader, on the import path of the loss's ignore index).
ROOTS = ("deepspeed", "transformers", "pydantic", "PyYAML", "safetensors", "numpy", "zstandard")
ALREADY_THERE = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|setuptools)$")  # a CUDA torch's own dependencies


def pins(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of the lock."""
    found = {}
    for line in lock.read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==")
            found[canonicalize_name(name)] = version.strip()
    return found


def closure(roots: tuple[str, ...], python_version: str) -> set[str]:
    """The installed distributions `roots` need on Python `python_version` (without extras), as this venv has them."""
    environment = default_environment() | {"python_version": python_version, "extra": ""}
    seen: set[str] = set()
    todo = [canonicalize_name(root) for root in roots]
    while todo:
        name = todo.pop()
        if name in seen or ALREADY_THERE.match(name):
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(canonicalize_name(requirement.name))
    return seen


def gpu_extra() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"]["gpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (major.minor)")
    parser.add_argument("--dest", type=Path, default=ROOT / ".gpu-wheels")
    args = parser.parse_args()
    pinned = pins(ROOT / "requirements" / "lock.txt")
    needed = closure(ROOTS, args.python_version)
    missing = sorted(needed - pinned.keys())
    if missing:
        sys.exit(f"not pinned in requirements/lock.txt: {', '.join(missing)}")
    args.dest.mkdir(parents=True, exist_ok=True)
    tag = args.python_version.replace(".", "")
    platform = ["--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64"]
    wanted = [f"{name}=={pinned[name]}" for name in sorted(needed - {"deepspeed"})] + gpu_extra()
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", args.python_version, "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3"]
        + ["--abi", "none", *platform, "--dest", str(args.dest), *wanted],
        check=True,
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir"]
        + [str(args.dest), f"deepspeed=={pinned['deepspeed']}"],
        check=True,
        env={**os.environ, "DS_BUILD_OPS": "0", "DS_BUILD_SHM_COMM": "0"},
    )
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(wheel.stat().st_size for wheel in wheels)
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB, in {args.dest} (for Python {args.python_version})")


if __name__ == "__main__":
    main()
