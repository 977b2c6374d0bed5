"""OpenAI request / response shapes for `pangu serve`.

Requests are pydantic models: a field of the wrong type or out of range is a 400 naming the field.
Fields the OpenAI API has and this server ignores (user, logit_bias, ...) are accepted and ignored;
`top_k`, `repetition_penalty` and `stop_token_ids` are extensions (vLLM spells them the same).
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..generation import SamplingConfig

DEFAULT_MAX_TOKENS = 16  # the OpenAI completions default


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
    seed: int | None = None
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    stop_token_ids: list[int] = Field(default_factory=list)
    stream_options: dict | None = None  # {"include_usage": true}: a last chunk with the usage

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and (self.stream_options or {}).get("include_usage"))

    def sampling(self, config, max_tokens: int | None = None, truncate: str = "error") -> SamplingConfig:
        """The row's SamplingConfig; temperature 0 is greedy (as the OpenAI API defines it)."""
        return SamplingConfig(
            max_new_tokens=max_tokens or self.max_tokens or DEFAULT_MAX_TOKENS, do_sample=self.temperature > 0,
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
            frequency_penalty=self.frequency_penalty, presence_penalty=self.presence_penalty,
            repetition_penalty=self.repetition_penalty, eos_token_id=config.eos_token_id,
            stop_token_ids=tuple(self.stop_token_ids), pad_token_id=config.pad_token_id, seed=self.seed,
            truncate=truncate,
        )

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(..., description="one text, or a list of texts (one choice each)")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The fine-tuning chat template (`finetune.data.render_chat`) ending in the assistant's prefix."""
    from ...finetune.data import ASSISTANT_PREFIX, render_chat

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


def completion_chunk(rid: str, model: str, index: int, text: str, finish_reason: str | None) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}]}


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


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}
