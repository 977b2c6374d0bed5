"""The chat template PanGu is fine-tuned with (`pangu finetune` rows with "messages") and prompted with
(`pangu serve`'s /v1/chat/completions), turn by turn::

    system     "{content}\\n"                    no loss
    user       "用户：{content}\\n助手："          no loss
    assistant  "{content}"                        loss; then "\\n" (loss) if more turns follow,
                                                  else the final <eot> (loss)

Turns are separated by "\\n", never by `<eot>`: with `eod_reset` the model restarts positions and
blocks attention after every `<eot>`, which would cut a conversation off from its own history. The
last message of a training row must be the assistant's. At generation time prompt with the same
template ending in "助手：" and stop at `<eot>` (id 9, REF "documents end with 9").
"""
from __future__ import annotations

CHAT_ROLES = ("system", "user", "assistant")
USER_PREFIX, ASSISTANT_PREFIX = "用户：", "助手："


def render_chat(messages: list[dict]) -> list[tuple[str, bool]]:
    """Chat messages -> segments under the template above (validated by `check_messages`)."""
    segments: list[tuple[str, bool]] = []
    for i, msg in enumerate(messages):
        role, content = msg["role"], msg["content"]
        if role == "system":
            segments.append((content + "\n", False))
        elif role == "user":
            segments.append((f"{USER_PREFIX}{content}\n{ASSISTANT_PREFIX}", False))
        else:
            segments.append((content, True))
            if i + 1 < len(messages):
                segments.append(("\n", True))
    return segments


def check_messages(messages) -> str | None:
    """Why a `messages` value is unusable, or None."""
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list of {role, content}"
    for j, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in CHAT_ROLES or not isinstance(msg.get("content"), str):
            return f"message {j} must be {{\"role\": one of {list(CHAT_ROLES)}, \"content\": str}}, got {msg!r}"[:200]
    if messages[-1]["role"] != "assistant":
        return "the last message must be the assistant's (its reply is what the loss trains)"
    return None
