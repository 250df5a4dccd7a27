"""Chat models for anchor discovery and the LLM judge: a callable ``prompt -> reply`` with ``batch(prompts)``.

- [`EndpointChat`][whp_trainer.chat.EndpointChat]: an OpenAI-compatible chat-completions server (vLLM, TGI,
  llama.cpp, Ollama, OpenAI, Hugging Face Inference Providers) through `huggingface_hub.InferenceClient`, with a
  timeout, retries of transient failures and an API key;
- [`LocalChat`][whp_trainer.chat.LocalChat]: a local `transformers` causal LM, greedy, its prompts generated in
  batches (left padding).

Any other ``Callable[[str], str]`` works where these do; [`ask`][whp_trainer.chat.ask] uses ``batch`` when there
is one.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import torch
from huggingface_hub import InferenceClient, InferenceTimeoutError
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import httpx  # the httpx module huggingface_hub uses, across its major versions

logger = logging.getLogger(__name__)

RETRIED_STATUS = (408, 429, 500, 502, 503, 504)  # as huggingface_hub's http_backoff retries


def ask(generate: Callable[[str], str], prompts: Sequence[str]) -> list[str]:
    """The replies of ``generate`` to ``prompts``: in batches when it has a ``batch`` method, else one by one."""
    batch = getattr(generate, "batch", None)
    return list(batch(list(prompts))) if batch else [generate(prompt) for prompt in prompts]


class EndpointError(ConnectionError, RuntimeError):
    """A chat server that cannot be reached or refused a request (a ``RuntimeError``, and an ``OSError`` that the
    ``whp`` command reports as one line)."""


def check_reachable(base_url: str, timeout: float = 10.0) -> None:
    """Open (and close) a connection to the server of ``base_url``: an ``EndpointError`` naming it when nothing
    answers there, before any model is loaded or any text is sent."""
    url = urlsplit(base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise EndpointError(f"{base_url}: not an http(s) URL of an OpenAI-compatible server (e.g. http://host:8000/v1)")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise EndpointError(f"{base_url}: cannot be reached ({error.strerror or error})") from None


class EndpointChat:
    """A chat model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: the server's base URL, e.g. ``http://localhost:8000/v1`` (``/chat/completions`` is appended).
        model: the model name sent with each request.
        api_key: sent as ``Authorization: Bearer``; ``None`` sends none.
        timeout: seconds to wait for one answer.
        max_retries: retries of a request that timed out, could not connect, or got HTTP 408, 429 or 5xx, waiting
            ``retry_wait`` seconds, then twice as long each time (at most 30 s).
        retry_wait: seconds before the first retry.
        temperature: sampling temperature (0: greedy, for reproducible discovery and judging).
        max_tokens: longest reply; ``None``: the server's default.
        concurrency: requests [`batch`][whp_trainer.chat.EndpointChat.batch] keeps in flight at once (servers
            such as vLLM batch them); the replies keep the prompts' order.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        retry_wait: float = 1.0,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        concurrency: int = 4,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.client = InferenceClient(base_url=self.base_url, api_key=api_key, timeout=timeout)
        self.max_retries, self.retry_wait = max_retries, retry_wait
        self.temperature, self.max_tokens, self.concurrency = temperature, max_tokens, concurrency

    def __call__(self, prompt: str) -> str:
        attempt = 0
        while True:
            try:
                return self._complete(prompt)
            except OfflineModeIsEnabled as error:
                raise EndpointError(
                    f"{self.base_url}: HF_HUB_OFFLINE=1 blocks every request of huggingface_hub, this server's too; "
                    "unset it for this command"
                ) from error
            except (InferenceTimeoutError, HfHubHTTPError, httpx.TransportError) as error:
                if not retried(error) or attempt == self.max_retries:
                    raise EndpointError(f"{self.base_url}/chat/completions: {describe(error)}") from error
                wait = min(self.retry_wait * 2**attempt, 30.0)
                logger.warning("%s: %s; retrying in %.1f s", self.base_url, describe(error), wait)
                time.sleep(wait)
                attempt += 1

    def batch(self, prompts: Sequence[str]) -> list[str]:
        """The replies to ``prompts``, in their order, ``concurrency`` requests at a time."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self, prompts))

    def _complete(self, prompt: str) -> str:
        try:
            output = self.client.chat_completion(
                [{"role": "user", "content": prompt}], model=self.model, temperature=self.temperature,
                max_tokens=self.max_tokens,
            )
            content = output.choices[0].message.content
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"{self.base_url}/chat/completions: not a chat completion response ({error})") from error
        if not isinstance(content, str):
            raise ValueError(f"{self.base_url}/chat/completions: not a chat completion response (no message content)")
        return content


def retried(error: Exception) -> bool:
    """Whether a failed request is worth repeating: a timeout, a connection failure, HTTP 408, 429 or 5xx."""
    if isinstance(error, HfHubHTTPError):
        return error.response is not None and error.response.status_code in RETRIED_STATUS
    return True


def describe(error: Exception) -> str:
    """The failure in one line: the HTTP status and the start of the server's answer, else the error itself."""
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code}: {error.response.text[:300]}"
    return f"{type(error).__name__}: {error}"


class LocalChat:
    """A local ``transformers`` causal LM as a chat model: greedy replies, prompts generated ``batch_size`` at a time.

    The tokenizer's chat template is applied when it has one. Prompts are padded on the left, so a batched reply
    is the reply to the prompt alone (in float32; half precision may differ in rare near-ties).

    Args:
        model: a causal LM (a ``PeftModel`` generates with its active adapter).
        tokenizer: its tokenizer (it needs a pad token).
        max_new_tokens: longest reply, in tokens.
        batch_size: prompts per ``generate`` call.
        context: a factory of a context manager entered around each ``generate`` (e.g. one disabling adapters).
    """

    def __init__(
        self,
        model,
        tokenizer,
        max_new_tokens: int = 1024,
        batch_size: int = 8,
        context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size, self.context = max_new_tokens, batch_size, context

    def __call__(self, prompt: str) -> str:
        return self.batch([prompt])[0]

    def batch(self, prompts: Sequence[str]) -> list[str]:
        replies = []
        for start in range(0, len(prompts), self.batch_size):
            replies += self._generate(list(prompts[start : start + self.batch_size]))
        return replies

    def _generate(self, prompts: list[str]) -> list[str]:
        tokenizer = self.tokenizer
        templated = bool(tokenizer.chat_template)
        if templated:
            prompts = [
                tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
                for p in prompts
            ]
        inputs = tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=not templated,
                           return_tensors="pt").to(self.model.device)
        with self.context(), torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=tokenizer.pad_token_id)
        return tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
