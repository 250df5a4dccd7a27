"""Chat models: an OpenAI-compatible endpoint (retries, timeouts, auth, errors) and a local model in batches; anchor
discovery and the LLM judge run against a local server speaking the OpenAI chat-completions API."""

import pytest
import yaml
from conftest import chat_completion

from whp_trainer import cli
from whp_trainer.chat import EndpointChat, LocalChat
from whp_trainer.evaluation import EvaluateConfig
from whp_trainer.evaluation.familiarity import completion_familiarity
from whp_trainer.evaluation.runner import make_judge


def test_endpoint_chat_sends_the_prompt_the_model_and_the_key(chat_server):
    assert EndpointChat(chat_server.url, "my-model", api_key="secret")("Hello there") == "ok"
    [(path, authorization, body)] = chat_server.requests
    assert path == "/v1/chat/completions" and authorization == "Bearer secret"
    assert body["model"] == "my-model" and body["messages"] == [{"role": "user", "content": "Hello there"}]
    assert body["temperature"] == 0.0


def test_endpoint_chat_batches_requests_concurrently_in_order(chat_server):
    import threading
    import time

    in_flight, most = [0], [0]
    lock = threading.Lock()

    def slow_echo(body):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return 200, chat_completion(body["messages"][0]["content"].upper())

    chat_server.reply = slow_echo
    prompts = [f"prompt {i}" for i in range(12)]
    assert EndpointChat(chat_server.url, "m", concurrency=4).batch(prompts) == [p.upper() for p in prompts]
    assert 1 < most[0] <= 4


def test_endpoint_chat_retries_transient_failures_only(chat_server):
    statuses = iter([503, 429, 200])
    chat_server.reply = lambda body: (status := next(statuses), chat_completion("done") if status == 200 else {})
    assert EndpointChat(chat_server.url, "m", retry_wait=0.01)("hi") == "done"
    assert len(chat_server.requests) == 3

    chat_server.requests.clear()
    chat_server.reply = lambda body: (401, {"error": "bad key"})
    with pytest.raises(RuntimeError, match=r"/v1/chat/completions: HTTP 401: .*bad key"):
        EndpointChat(chat_server.url, "m", retry_wait=0.01)("hi")
    assert len(chat_server.requests) == 1  # an authentication error is not retried

    chat_server.reply = lambda body: (200, {"unexpected": True})
    with pytest.raises(ValueError, match="not a chat completion response"):
        EndpointChat(chat_server.url, "m")("hi")
    with pytest.raises(RuntimeError, match=r"127.0.0.1:9/v1/chat/completions: ConnectError"):
        EndpointChat("http://127.0.0.1:9/v1", "m", max_retries=1, retry_wait=0.01)("hi")


def test_endpoint_chat_explains_that_offline_mode_blocks_it(chat_server, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE=1 blocks every request"):
        EndpointChat(chat_server.url, "m")("hi")
    assert not chat_server.requests


def test_local_chat_batches_and_answers_as_one_by_one(tokenizer, make_model):
    model = make_model()
    calls = []
    generate = model.generate
    model.generate = lambda **kwargs: calls.append(kwargs["input_ids"].shape[0]) or generate(**kwargs)
    prompts = ["Harry said", "The cat sat on the mat and", "Hermione's wand"]
    chat = LocalChat(model, tokenizer, max_new_tokens=5, batch_size=2)
    batched = chat.batch(prompts)
    assert calls == [2, 1]
    assert batched == [chat(prompt) for prompt in prompts]  # left padding: the same greedy replies

    templated = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, **tokenizer.special_tokens_map)
    templated.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    chat = LocalChat(model, templated, max_new_tokens=5, batch_size=3)
    assert chat.batch(prompts) == [chat(prompt) for prompt in prompts]


def familiar_server_reply(body):
    """The server's model: anchors for a discovery prompt; for a judge prompt, explicit iff Hogwarts is named."""
    question = body["messages"][0]["content"]
    if "idiosyncratic" in question:
        return 200, chat_completion('```json\n{"Hogwarts": "Mystic Academy", "Quidditch": "Skyball"}\n```')
    completion = question.split("Completion:", 1)[1]
    return 200, chat_completion('{"category": "explicit"}' if "Hogwarts" in completion else "Category: none")


def test_discovery_and_judge_against_an_openai_compatible_server(chat_server, tmp_path, monkeypatch, no_model_loading):
    chat_server.reply = familiar_server_reply
    (tmp_path / "forget.txt").write_text("Harry flew to Hogwarts.\n\nThe Quidditch match began.", encoding="utf-8")
    monkeypatch.setenv("MY_KEY", "k-123")
    cli.main(["anchors", "--method", "llm", "--llm_url", chat_server.url, "--llm_model", "served", "--llm_api_key_env",
              "MY_KEY", "--forget_data", str(tmp_path / "forget.txt"), "--output", str(tmp_path / "candidates.yaml")])
    assert yaml.safe_load((tmp_path / "candidates.yaml").read_text()) == {"Hogwarts": "Mystic Academy",
                                                                         "Quidditch": "Skyball"}
    assert {(auth, body["model"]) for _, auth, body in chat_server.requests} == {("Bearer k-123", "served")}

    config = EvaluateConfig(judge="llm", judge_url=chat_server.url, judge_model="judge", completions=2)
    judge = make_judge(config, None, None, None)
    result = completion_familiarity([[" at Hogwarts", " home"], [" the pitch"]], judge, prompts=["Harry flew", "He"])
    assert result["categories"] == [["explicit", "none"], ["none"]] and result["score"] == pytest.approx(1 / 3)
