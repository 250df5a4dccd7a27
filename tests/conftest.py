import os
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
    """``torchrun`` with ``processes`` processes; ``--standalone`` lets it bind a free local port itself (a port
    probed free here could be taken by another job before torchrun binds it)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone"]


def write_tiny_gguf(model, tokenizer, path) -> None:
    """``model`` (a tiny Llama) and ``tokenizer`` (byte-level BPE) written as a GGUF file, float32, with llama.cpp's
    names and its rotary permutation of the query and key weights (which transformers undoes on loading).

    The unknown token is spelt ``<|endoftext|>``, as in GPT-2 vocabularies: transformers' GGUF tokenizer adds that
    token when the vocabulary lacks it (byte-level BPE never produces the unknown token)."""
    import json

    import gguf

    config, state = model.config, {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}

    def permuted(weights, heads):  # llama.cpp's convert_hf_to_gguf permute
        pairs = weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        return pairs.swapaxes(1, 2).reshape(weights.shape)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<|endoftext|>" if token == tokenizer.unk_token else token for token, _ in vocab])
    writer.add_token_types([3 if token in tokenizer.all_special_tokens else 1 for token, _ in vocab])
    merges = backend["model"]["merges"]
    writer.add_token_merges([" ".join(merge) if isinstance(merge, list) else merge for merge in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer_names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                   "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                   "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, weights in state.items():
        if name.startswith("model.layers."):
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            module = rest.removesuffix(".weight")
            if module == "self_attn.q_proj":
                weights = permuted(weights, config.num_attention_heads)
            elif module == "self_attn.k_proj":
                weights = permuted(weights, config.num_key_value_heads)
            names[name] = f"blk.{layer}.{layer_names[module]}.weight"
        writer.add_tensor(names[name], weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="session")
def gguf_base(tokenizer, tmp_path_factory):
    """A folder holding ``tiny.gguf``: the tiny Llama of seed 0 and the session tokenizer, as a GGUF file."""
    folder = tmp_path_factory.mktemp("gguf")
    write_tiny_gguf(tiny_llama(tokenizer, seed=0), tokenizer, folder / "tiny.gguf")
    return folder
