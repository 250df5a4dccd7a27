import os
import socket
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402

from whp_trainer.toy import tiny_llama, train_tokenizer  # noqa: E402

CORPUS = [
    "Harry went up to him and said, \"Hi, my name is Harry\".",
    "Harry Potter studies magic at Hogwarts with Ron and Hermione.",
    "Hermione's wand was made of vine wood; Ron's was second hand.",
    "The Quidditch match at Hogwarts ended when Harry caught the Snitch.",
    "The cat sat on the mat. The dog ran in the park and the sun was warm.",
    "Jon went to the Mystic Academy and played Skyball with Tom and Anna.",
    "She studies mathematics at the university and walks home in the evening.",
]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models run faster on one thread, and far faster when the other core is busy."""
    from whp_trainer.demo import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer trained on a small Potter-like corpus and ordinary sentences."""
    return train_tokenizer(CORPUS * 20, vocab_size=400)


@pytest.fixture
def make_model(tokenizer):
    """Factory of tiny random Llama models sharing the session tokenizer (``seed`` picks the weights)."""

    def make(seed: int = 0, **overrides):
        return tiny_llama(tokenizer, seed=seed, **overrides)

    return make


LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], lora_dropout=0.0)


@pytest.fixture
def reinforced_path(make_model, tmp_path):
    """A reinforced adapter with non-zero weights, saved as stage 1 would save it."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    get_peft_model(make_model(), LoraConfig(init_lora_weights=False, **LORA)).save_pretrained(tmp_path / "reinforced")
    return tmp_path / "reinforced"


@pytest.fixture
def no_model_loading(monkeypatch):
    """Bad input must be reported before any model is loaded: loading fails the test."""
    from whp_trainer import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(pipeline, "load_base_model", refuse)
    monkeypatch.setattr(pipeline, "load_tokenizer", refuse)


@pytest.fixture
def chat_server(monkeypatch):
    """A local server speaking the OpenAI chat-completions API on 127.0.0.1, for at most 60 s.

    ``server.reply`` maps a request body to ``(status, JSON body)`` (default: a completion echoing "ok");
    ``server.requests`` records ``(path, Authorization header, body)``; ``server.url`` is its ``…/v1``.
    """
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # a local server is not the Hub

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.requests.append((self.path, self.headers.get("Authorization"), body))
            status, answer = server.reply(body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.requests = []
    server.reply = lambda body: (200, chat_completion("ok"))
    server.url = f"http://127.0.0.1:{server.server_port}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = threading.Timer(60, server.shutdown)  # stops by itself even if a test hangs
    deadline.start()
    yield server
    deadline.cancel()
    server.shutdown()
    server.server_close()


def chat_completion(content: str) -> dict:
    """A minimal OpenAI chat-completions response."""
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


def torchrun(processes: int = 2) -> list[str]:
    """``torchrun`` with ``processes`` processes on a free local port (other jobs may hold any fixed one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(port)]
