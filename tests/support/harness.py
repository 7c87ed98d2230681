"""The test harness: the environment the run found, `gpustack` in subprocesses (commands and
servers), and the models the end-to-end tests share, kept in a cache outside the repository."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

# The repository.
ROOT = Path(__file__).resolve().parents[2]
# The environment as the test run found it, before any test changed it.
ORIGINAL_ENV = dict(os.environ)
# Models pulled for the end-to-end tests are kept between runs, outside the repository.
CACHE = Path(ORIGINAL_ENV.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpustack-tests"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in ORIGINAL_ENV.items() if not k.startswith("GPUSTACK_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gpustack(*args: str, env: dict[str, str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    # No standard input unless given: `run` reads a piped one as part of its prompt.
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [sys.executable, "-m", "gpustack_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kwargs,
    )


class ServerProcess:
    """`gpustack serve` in a subprocess on a free port, stopped (SIGTERM) when the block ends;
    `command` runs another gpustack than this source tree's (a built binary)."""

    def __init__(
        self,
        home: Path,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        command: list[str] | None = None,
        host: str = "127.0.0.1",
    ):
        self.command = command or [sys.executable, "-m", "gpustack_cli"]
        self.port = port or free_port()
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        self.args = ["serve", "--port", str(self.port), *args]
        self.env = clean_env(GPUSTACK_HOME=str(home), **(env or {}))
        self.log = home / f"serve-{self.port}.log"

    def __enter__(self) -> ServerProcess:
        home = Path(self.env["GPUSTACK_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        self._log = self.log.open("w")
        self.proc = subprocess.Popen(
            [*self.command, *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpustack serve exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError(f"gpustack serve did not start:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log.read_text()

    def internal_errors(self) -> int:
        """Exceptions no route turned into an API error, as the server counts them; each is a bug."""
        key = self.env.get("GPUSTACK_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.get(self.url + "/metrics", headers=headers, timeout=30)
        if response.status_code != 200:  # keys only in the store: the log says it as well
            return self.output().count("internal error in ") + self.output().count("error while streaming")
        found = re.search(r"^gpustack_internal_errors_total (\S+)$", response.text, re.MULTILINE)
        return int(float(found.group(1))) if found else 0

    def __exit__(self, *exc: object) -> None:
        errors = self.internal_errors() if self.proc.poll() is None else 0
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        # Every end-to-end test's server ends with no internal error: one is a bug, whatever the test checked.
        assert errors == 0, f"the server counted {errors} internal error(s):\n{self.log.read_text()[-5000:]}"


DEFAULT_MODELS = ("smollm2", "all-minilm-l6-v2", "whisper-tiny.en", "piper-joe")


def home_sharing_models(models_home: Path, home: Path) -> Path:
    """`home`, a store of its own (keys, stored responses, models added to it) whose models
    folder links to each of the test models: their files are shared, never copied or changed."""
    (home / "models").mkdir(parents=True)
    for model in (models_home / "models").iterdir():
        (home / "models" / model.name).symlink_to(model, target_is_directory=True)
    return home


def llama_cpp_sdist() -> Path:
    """The source distribution of the llama-cpp-python installed (it vendors llama.cpp: its
    converter, its real chat templates), downloaded once into the tests' cache."""
    from importlib.metadata import version

    folder = CACHE / "sdist"
    release = version("llama-cpp-python")
    found = list(folder.glob(f"llama_cpp_python-{release}.tar.gz"))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        command += [f"llama-cpp-python=={release}", "-d", str(folder)]
        subprocess.run(command, check=True, env=clean_env(), timeout=600)
        found = list(folder.glob(f"llama_cpp_python-{release}.tar.gz"))
    return found[0]


def extract_llama_cpp(target: Path, wanted: Callable[[str], bool]) -> Path:
    """The files of the sdist's vendored llama.cpp whose paths (under it) `wanted` takes,
    extracted under `target`; the extracted llama.cpp folder."""
    import tarfile

    sdist = llama_cpp_sdist()
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix) and wanted(m.name[len(prefix) :])]
        archive.extractall(target, members=members, filter="data")
    return target / prefix


def _converter(workdir: Path) -> Path:
    """llama.cpp's own convert_hf_to_gguf.py, from the sdist of the llama-cpp-python installed."""
    return extract_llama_cpp(
        workdir, lambda path: path == "convert_hf_to_gguf.py" or path.startswith(("gguf-py/", "conversion/"))
    )


def convert_to_gguf(folder: Path, target: Path, outtype: str, workdir: Path) -> Path:
    """A Hugging Face folder converted by llama.cpp's own converter (kept in the cache)."""
    if not target.is_file():
        llama_dir = _converter(workdir)
        partial = target.with_suffix(".part")
        subprocess.run(
            [sys.executable, "convert_hf_to_gguf.py", str(folder), "--outfile", str(partial), "--outtype", outtype],
            cwd=llama_dir,
            check=True,
            capture_output=True,
            timeout=600,
            env=clean_env(PYTHONPATH=f"{llama_dir / 'gguf-py'}:{llama_dir}"),
        )
        partial.rename(target)
    return target


def pull_as(models_home: Path, source: Path, name: str) -> str:
    if not (models_home / "models" / name / "manifest.json").is_file():
        result = gpustack("pull", str(source), "--name", name, env=clean_env(GPUSTACK_HOME=str(models_home)))
        assert result.returncode == 0, result.stderr
    return name


def seeds_proxy_example(server_url: str, key: str) -> list:
    """The seeds' Generic Proxy curl example, verbatim but for the server's address; its JSON answer."""
    command = f"""curl {server_url}/model/proxy/embed \\
  -X POST \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer $GPUSTACK_API_KEY" \\
  -H "X-GPUStack-Model: bge-m3" \\
  -d '{{"inputs": ["What is Deep Learning?", "Deep Learning is not..."]}}'"""
    result = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**ORIGINAL_ENV, "GPUSTACK_API_KEY": key},
    )
    return json.loads(result.stdout)
