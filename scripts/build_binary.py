"""Build the standalone `gpustack` binary with PyInstaller: one file that runs without Python.

    python scripts/build_binary.py [--engines llm,embeddings,images,audio] [--onedir] [--dist DIR]

Run it in an environment where gpustack and the engines to bundle are installed
(`pip install -e '.[llm,build]'`, say). The binary carries the CLI, the server, the store and pull
code, remote models, and the chosen engines with their native libraries (llama.cpp's shared
libraries, CTranslate2, ONNX Runtime, torch). Without `--engines` it bundles every engine whose
libraries are installed here; an engine left out answers with a clear error naming this script.
Libraries of engines left out are excluded, so that an optional import elsewhere (a library that
tries torch if present) cannot pull them in.

PyInstaller builds for the platform it runs on: build on Linux for Linux, on macOS for macOS.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Group:
    """One `gpustack-cli[EXTRA]` engine group: its engine modules and what PyInstaller must collect."""

    def __init__(
        self,
        modules: list[str],
        needs: list[str],
        collect_all: list[str],
        binaries: list[str],
        metadata: list[str] | None = None,
    ):
        self.modules = modules  # our engine modules, imported by name at run time
        self.needs = needs  # the libraries that must be importable for the group to be bundled
        self.collect_all = collect_all  # packages with data files or lazy imports PyInstaller cannot see
        self.binaries = binaries  # packages whose shared libraries are loaded by path (ctypes)
        # Distributions whose metadata (and their dependencies') is read at run time: transformers
        # checks the installed versions of requests, tqdm, tokenizers and more on import.
        self.metadata = metadata or []


GROUPS = {
    "llm": Group(["engines.llama", "engines.llama_media", "PIL.Image"], ["llama_cpp"], [], ["llama_cpp"]),
    "embeddings": Group(
        ["engines.sentence"],
        ["sentence_transformers", "torch"],
        ["sentence_transformers"],
        [],
        ["sentence-transformers", "transformers"],
    ),
    "images": Group(
        ["engines.diffusion"],
        ["diffusers", "transformers", "torch"],
        ["diffusers"],
        [],
        ["diffusers", "transformers", "accelerate"],
    ),
    "audio": Group(
        ["engines.whisper", "engines.piper", "av"],
        ["faster_whisper", "piper", "av"],
        ["faster_whisper", "piper"],
        ["ctranslate2"],
    ),
}
# Heavy libraries that only some groups need: excluded from a build without those groups.
HEAVY = {
    "torch": {"embeddings", "images"},
    "transformers": {"embeddings", "images"},
    "sentence_transformers": {"embeddings"},
    "diffusers": {"images"},
    "accelerate": {"images"},
    "faster_whisper": {"audio"},
    "ctranslate2": {"audio"},
    "onnxruntime": {"audio"},
    "piper": {"audio"},
    "av": {"audio"},
    "llama_cpp": {"llm"},
}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def pyinstaller_args(engines: list[str], onedir: bool, dist: Path, work: Path) -> list[str]:
    args = [
        str(ROOT / "gpustack_cli" / "__main__.py"),
        "--name",
        "gpustack",
        "--onedir" if onedir else "--onefile",
        "--noconfirm",
        "--clean",
        "--log-level",
        "WARN",
        "--distpath",
        str(dist),
        "--workpath",
        str(work),
        "--specpath",
        str(work),
        "--paths",
        str(ROOT),
        # Our modules are imported by name (engines, API routes): collect them all.
        "--collect-submodules",
        "gpustack_cli",
        # The playground's static files.
        "--collect-data",
        "gpustack_cli",
        "--hidden-import",
        "engines.base",
        "--hidden-import",
        "gpustack_cli.upstream.pool",
    ]
    for name in engines:
        group = GROUPS[name]
        for module in group.modules:
            args += ["--hidden-import", module]
        for package in group.collect_all:
            args += ["--collect-all", package]
        for package in group.binaries:
            args += ["--collect-binaries", package]
        for distribution in group.metadata:
            args += ["--recursive-copy-metadata", distribution]
    for package, users in HEAVY.items():
        if not users & set(engines):
            args += ["--exclude-module", package]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", help=f"comma-separated groups of {', '.join(GROUPS)} (default: those installed)")
    parser.add_argument("--onedir", action="store_true", help="a folder with the executable instead of one file")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the binary goes (default: dist/)")
    parser.add_argument("--work", type=Path, default=ROOT / "build", help="PyInstaller's work folder (build/)")
    args = parser.parse_args()
    try:
        import PyInstaller.__main__ as pyinstaller
    except ImportError:
        sys.exit("PyInstaller is not installed: pip install -e '.[build]'")
    if args.engines:
        engines = [e.strip() for e in args.engines.split(",") if e.strip()]
        unknown = [e for e in engines if e not in GROUPS]
        if unknown:
            sys.exit(f"unknown engine group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
        missing = [f"{e} ({m})" for e in engines for m in GROUPS[e].needs if not installed(m)]
        if missing:
            sys.exit(f"not installed here, so it cannot be bundled: {', '.join(missing)}")
    else:
        engines = [e for e, group in GROUPS.items() if all(installed(m) for m in group.needs)]
    started = time.monotonic()
    print(f"building gpustack with engines: {', '.join(engines) or 'none (remote models only)'}")
    pyinstaller.run(pyinstaller_args(engines, args.onedir, args.dist, args.work))
    binary = args.dist / ("gpustack/gpustack" if args.onedir else "gpustack")
    if sys.platform == "win32":
        binary = binary.with_suffix(".exe")
    size = binary.stat().st_size / 2**20
    print(f"built {binary} ({size:.0f} MiB) in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
