"""Token ids -> text deltas as they are generated, with OpenAI-style stop strings.

The text of a row is always `tokenizer.decode_ids(tokens)`; a delta is emitted only for the part
that can no longer change: a trailing U+FFFD (an incomplete UTF-8 byte sequence) and a
trailing prefix of a stop string are held back. When a stop string appears, the text is cut
before it and the row ends. The concatenated deltas equal `text` at the end.
"""
from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop=()):
        self.tokenizer = tokenizer
        self.stop = [s for s in ([stop] if isinstance(stop, str) else stop or ()) if s]
        self.tokens: list[int] = []
        self.text = ""  # the row's text so far (cut at a stop string once one matched)
        self.sent = 0  # characters of `text` already handed out as deltas
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one token; returns the newly safe text (maybe empty)."""
        self.tokens.append(int(token))
        text = self.tokenizer.decode_ids(self.tokens)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self._take(len(self.text))
        self.text = text
        return self._take(len(text) - self._held(text))

    def push_stops(self, token: int) -> bool:
        """`push` for callers that only need to know whether a stop string ended the row."""
        self.push(token)
        return self.stopped

    def flush(self) -> str:
        """The rest of the text (call once the row has finished)."""
        return self._take(len(self.text))

    def _held(self, text: str) -> int:
        held = len(text) - len(text.rstrip("\ufffd"))
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    held = max(held, n)
                    break
        return held

    def _take(self, end: int) -> str:
        if end <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent:end], end
        return delta
