"""OpenAI request / response shapes for `pangu serve`.

Requests are pydantic models: a field of the wrong type or out of range is a 400 naming the field.
Fields the OpenAI API has and this server ignores (user, logit_bias, ...) are accepted and ignored;
`top_k`, `repetition_penalty` and `stop_token_ids` are extensions (vLLM spells them the same).
What one request may ask for is bounded (stop strings, their length, stop ids, prompts per request) so
that no request can slow the others' decode steps (issue 29); text must be valid Unicode (a lone
surrogate escaped in the JSON is a 400, not a tokenizer traceback).
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..sampling import SamplingConfig

DEFAULT_MAX_TOKENS = 16  # the OpenAI completions default
MAX_STOP = 4  # stop strings per request: the OpenAI API's own limit
MAX_STOP_CHARS = 256  # characters per stop string (each is matched against the text after every token)
MAX_STOP_TOKEN_IDS = 64  # stop_token_ids per request
MAX_PROMPTS = 64  # prompts in one completions request (each is a row; the queue bounds them further)
MAX_LOGPROBS = 5  # top alternatives per token: the OpenAI completions API's own limit


def valid_text(text: str, where: str) -> str:
    """`text` unchanged, or ValueError when it is not encodable Unicode (a lone surrogate from a JSON escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{where} holds a lone surrogate (U+{ord(text[err.start]):04X}) at character "
                         f"{err.start}: not valid Unicode text") from None
    return text


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=1, description="one choice per prompt")
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2 ** 64 - 1)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    stop_token_ids: list[int] = Field(default_factory=list, max_length=MAX_STOP_TOKEN_IDS)
    stream_options: dict | None = None  # {"include_usage": true}: a last chunk with the usage

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, stop):
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        for i, s in enumerate(stops):
            if len(s) > MAX_STOP_CHARS:
                raise ValueError(f"stop string {i} has {len(s)} characters; at most {MAX_STOP_CHARS}")
            valid_text(s, f"stop string {i}")
        return stop

    @field_validator("stop_token_ids")
    @classmethod
    def _non_negative_ids(cls, ids):
        bad = [t for t in ids if t < 0]
        if bad:
            raise ValueError(f"token ids must be >= 0, got {bad[0]}")
        return ids

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and (self.stream_options or {}).get("include_usage"))

    def sampling(self, config, max_tokens: int | None = None, truncate: str = "error") -> SamplingConfig:
        """The row's SamplingConfig; temperature 0 is greedy (as the OpenAI API defines it)."""
        max_new_tokens = max_tokens or self.max_tokens or DEFAULT_MAX_TOKENS
        return SamplingConfig.from_options(self, config, max_new_tokens=max_new_tokens, do_sample=self.temperature > 0,
                                           truncate=truncate)

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="a text, a list of texts, a list of token ids, or a list of token-id lists (one choice each)")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _bounded_prompt(cls, prompt):
        if isinstance(prompt, str):
            return valid_text(prompt, "prompt")
        if not prompt:
            raise ValueError("prompt must be a text or a non-empty list of texts / token ids")
        if isinstance(prompt[0], list) or isinstance(prompt[0], str):
            if len(prompt) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompt)}")
            for i, p in enumerate(prompt):
                if isinstance(p, str):
                    valid_text(p, f"prompt {i}")
        return prompt

    def prompts(self) -> list:
        """One entry per choice: a text or a list of token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _unicode(cls, content):
        return valid_text(content, "content")


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False  # each generated token's logprob (and top_logprobs alternatives), non-streaming
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The fine-tuning chat template (`tokenizer.chat.render_chat`) ending in the assistant's prefix."""
    from ...tokenizer.chat import ASSISTANT_PREFIX, render_chat

    text = "".join(segment for segment, _ in render_chat([m.model_dump() for m in messages]))
    if messages[-1].role == "system":
        text += ASSISTANT_PREFIX
    return text


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}


def completion_chunk(rid: str, model: str, index: int, text: str, finish_reason: str | None,
                     logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}]}


def usage_chunk(rid: str, model: str, kind: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_body(rid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int):
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_chunk(rid: str, model: str, delta: dict, finish_reason: str | None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
