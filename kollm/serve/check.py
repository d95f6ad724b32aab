"""`kollm serve --check URL`: smoke-test any OpenAI-compatible endpoint through the openai client."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kollm.errors import KollmError

KOREAN_PROBE = [{"role": "user", "content": "한국의 수도는 어디인가요? 한 문장으로 답해 주세요."}]


class EndpointCheckError(KollmError):
    """An endpoint failed the smoke test."""

    exit_code = 11

    def __init__(self, url: str, step: str, detail: str) -> None:
        self.url = url
        self.step = step
        super().__init__(
            f"{url} failed the '{step}' check: {detail}.",
            hint="Check the URL (it must end in /v1), the API key (--api-key or OPENAI_API_KEY) and the server log.",
        )


@dataclass
class CheckResult:
    """What the smoke test saw."""

    url: str
    models: list[str]
    model: str
    chat_seconds: float
    chat_tokens: int
    first_token_seconds: float
    stream_chunks: int
    steps: dict[str, str] = field(default_factory=dict)


def check_endpoint(
    url: str, *, api_key: str | None = None, model: str | None = None, max_tokens: int = 16
) -> CheckResult:
    """List models, run a Korean chat completion, then stream one, timing both.

    Raises:
        EndpointCheckError: naming the first step that failed.
    """
    import openai

    client = openai.OpenAI(base_url=url, api_key=api_key or "none", timeout=120, max_retries=0)
    try:
        models = [m.id for m in client.models.list().data]
    except openai.AuthenticationError as e:
        raise EndpointCheckError(url, "models", "401 Unauthorized: wrong or missing API key") from e
    except openai.APIError as e:
        raise EndpointCheckError(url, "models", str(e)) from e
    if not models:
        raise EndpointCheckError(url, "models", "the server lists no models")
    chosen = model or models[0]
    try:
        started = time.perf_counter()
        reply = client.chat.completions.create(
            model=chosen, messages=KOREAN_PROBE, max_tokens=max_tokens, temperature=0.0
        )
        chat_seconds = time.perf_counter() - started
        if not reply.choices or reply.usage is None or reply.usage.completion_tokens < 1:
            raise EndpointCheckError(url, "chat", "the reply has no generated tokens")
        started = time.perf_counter()
        first = None
        chunks = 0
        stream = client.chat.completions.create(
            model=chosen, messages=KOREAN_PROBE, max_tokens=max_tokens, temperature=0.0, stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first if first is not None else time.perf_counter() - started
                chunks += 1
    except openai.APIError as e:
        raise EndpointCheckError(url, "chat", str(e)) from e
    if chunks == 0:
        raise EndpointCheckError(url, "stream", "the stream carried no content")
    return CheckResult(
        url=url,
        models=models,
        model=chosen,
        chat_seconds=chat_seconds,
        chat_tokens=reply.usage.completion_tokens,
        first_token_seconds=first or 0.0,
        stream_chunks=chunks,
        steps={"models": "ok", "chat": "ok", "stream": "ok"},
    )
