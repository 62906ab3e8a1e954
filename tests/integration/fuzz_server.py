"""The tiny model on the llama.cpp engine behind uvicorn, in a process of its own, for the fuzz
tests: a request that makes llama.cpp abort kills this process, not the test run, and the test
sees it die. ``python -m tests.integration.fuzz_server MODEL_DIR GGUF DATA_DIR PORT``; the
caller sets ``SELFTUNE_CONFIG`` and ``SELFTUNE_CACHE_PATH``.

:func:`native_server` starts one and yields its base URL once ``/health`` answers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.scenario import free_port

__all__ = ["ServerProcess", "native_server"]


class ServerProcess:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def alive(self) -> str | None:
        """None while the process runs and answers /health with 200, else why not (with the
        end of its log)."""
        code = self.process.poll()
        if code is None:
            try:
                status = httpx.get(f"{self.url}/health", timeout=30).status_code
            except httpx.TransportError as exc:
                return f"/health did not answer: {exc!r}\n{self.log_tail()}"
            return None if status == 200 else f"/health answered {status}\n{self.log_tail()}"
        return f"the server process exited with {code}\n{self.log_tail()}"

    def log_tail(self, size: int = 4000) -> str:
        return self.log.read_bytes()[-size:].decode("utf-8", "replace")


@contextlib.contextmanager
def native_server(
    model_dir: Path, gguf: Path, root: Path, shared_cache: Path
) -> Iterator[ServerProcess]:
    """A server process for ``gguf`` (the tiny model of ``model_dir``), stopped on exit."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SELFTUNE_") or key == "SELFTUNE_TEST_TOKENIZER"
    }
    env.update(
        SELFTUNE_CONFIG=str(root / "selftune.toml"),
        SELFTUNE_CACHE_PATH=str(shared_cache),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    log = root / "server.log"
    args = [sys.executable, "-m", "tests.integration.fuzz_server"]
    args += [str(model_dir), str(gguf), str(root / "data"), str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, env=env, stdout=out, stderr=out, cwd=Path(__file__).parents[2]
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the server did not start\n{server.log_tail()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"the server did not start\n{server.log_tail()}"
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(model_dir: str, gguf: str, data_dir: str, port: str) -> None:
    import uvicorn

    from selftune.api.app import create_app
    from selftune.engines.llamacpp_engine import LlamaCppEngine
    from tests.integration.conftest import tiny_settings

    engine = LlamaCppEngine(Path(gguf), Path(model_dir), context_length=256, threads=1)
    settings = tiny_settings(Path(model_dir), data_dir=data_dir)
    app = create_app(settings, engine=engine)
    try:
        uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")
    finally:
        engine.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
