"""llama-cpp-python's real server for tests: a tiny generated model, its config, the process.

`.ci/llama` (`make llama`) makes .venv-llama: llama-cpp-python[server] (pinned), gguf,
numpy and a vocabulary-only GGUF. `LlamaServer` writes the tiny model (tiny_gguf.py, run by
that venv's python), a config file serving it under three aliases, and runs
`python -m llama_cpp.server` on a free loopback port until `GET /v1/models` answers.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from proxy.tests.processes import LOOPBACK, REPO_ROOT, ServerProcess, free_port

LLAMA_VENV = REPO_ROOT / ".venv-llama"
LLAMA_PYTHON = LLAMA_VENV / "bin" / "python"
VOCAB = LLAMA_VENV / "vocab" / "ggml-vocab-llama-spm.gguf"
TINY_GGUF = Path(__file__).with_name("tiny_gguf.py")
REQUIRE_ENV = "AETHERGATE_REQUIRE_LLAMA"

CHAT_MODEL = "tiny-chat"  # ChatML from the GGUF's own tokenizer.chat_template
EMBED_MODEL = "tiny-embed"  # embedding: true, mean pooling
TOOLS_MODEL = "tiny-tools"  # llama-cpp-python's chatml-function-calling chat format
N_CTX = 512
SEED = 1234
START_SECONDS = 60.0
MODEL_WRITE_SECONDS = 120.0


def missing() -> str:
    """Why the real server cannot run here ("" when it can)."""
    if not LLAMA_PYTHON.exists():
        return f"{LLAMA_VENV.name} not found (make it with `make llama`)"
    if not VOCAB.exists():
        return f"{VOCAB} not found (rerun `make llama`)"
    return ""


def write_model(directory: Path) -> Path:
    """The tiny model, written into `directory` by .venv-llama's python."""
    path = directory / "tiny-llama.gguf"
    result = subprocess.run(
        [str(LLAMA_PYTHON), str(TINY_GGUF), str(VOCAB), str(path), "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=MODEL_WRITE_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"tiny_gguf.py failed:\n{result.stderr[-4000:]}")
    return path


def server_config(model: Path, port: int) -> dict:
    """llama_cpp.server's config file: one model file under three aliases, small and quiet."""
    common = {
        "model": str(model),
        "n_ctx": N_CTX,
        "n_batch": N_CTX,
        "n_ubatch": N_CTX,
        "n_threads": 1,
        "n_threads_batch": 1,
        "seed": SEED,
        "verbose": False,
    }
    return {
        "host": LOOPBACK,
        "port": port,
        "models": [
            {**common, "model_alias": CHAT_MODEL},
            {
                **common,
                "model_alias": EMBED_MODEL,
                "embedding": True,
                # A causal model has no pooling of its own: without it llama-cpp-python
                # answers one vector per token, not one per input.
                "kv_overrides": ["llama.pooling_type=int:1"],
            },
            {**common, "model_alias": TOOLS_MODEL, "chat_format": "chatml-function-calling"},
        ],
    }


class LlamaServer:
    """`python -m llama_cpp.server --config_file …` serving the tiny model on 127.0.0.1.

    `url` is its root, `v1` its OpenAI base URL. Use as a context manager.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.port = free_port()
        self.model = write_model(self.directory)
        self.config = self.directory / "llama-server.json"
        self.config.write_text(json.dumps(server_config(self.model, self.port), indent=2))
        self.process = ServerProcess(
            [str(LLAMA_PYTHON), "-m", "llama_cpp.server", "--config_file", str(self.config)],
            # The server reads HOST, PORT and CONFIG_FILE from the environment before its
            # config file: a value left in the caller's environment must not win.
            env={
                "HOST": LOOPBACK,
                "PORT": str(self.port),
                "CONFIG_FILE": str(self.config),
            },
            port=self.port,
            ready_path="/v1/models",
            cwd=self.directory,
        )

    @property
    def url(self) -> str:
        """The server's root URL (no trailing slash)."""
        return self.process.url

    @property
    def v1(self) -> str:
        """Its OpenAI base URL, as an endpoint's base_url."""
        return f"{self.url}/v1"

    def log_text(self) -> str:
        """What the server printed so far (its own access log included)."""
        return self.process.log_text()

    def start(self) -> LlamaServer:
        self.process.start(timeout=START_SECONDS)
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def required() -> bool:
    """Whether a missing .venv-llama fails the tests instead of skipping them (CI)."""
    return os.environ.get(REQUIRE_ENV) == "1"
