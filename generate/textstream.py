"""Incremental detokenization with stop strings: turns accepted tokens into safe-to-send text deltas.

Text is held back while it ends in an incomplete UTF-8 character (U+FFFD from a split byte token) or
in a prefix of a stop string, so a client never receives text that a stop string later cuts off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"


class TextStream:
    """Accumulates generated token ids; `push` returns (new text, stopped)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.text = ""  # full decoded text so far (up to a stop string once stopped)
        self.sent = 0  # characters of self.text already returned
        self.stopped = False
        self._checked = 0  # stop strings were searched in text[:_checked] already

    def _decode(self) -> str:
        return self.tokenizer.decode(
            self.token_ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def push(self, token_ids: Sequence[int]) -> tuple[str, bool]:
        """Add tokens; -> (text newly safe to send, whether a stop string ended the text)."""
        if self.stopped:
            return "", True
        self.token_ids.extend(int(t) for t in token_ids)
        text = self._decode()
        if self.stop:
            longest = max(len(s) for s in self.stop)
            start = max(0, self._checked - longest + 1)
            cut = min((i for i in (text.find(s, start) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text = text[:cut]
                self.stopped = True
                return self._flush(), True
        self.text = text
        safe = len(text)
        while safe > self.sent and text[safe - 1] == REPLACEMENT:  # a multi-byte character not complete yet
            safe -= 1
        # Only text before an incomplete character is final: the U+FFFD at the end becomes another
        # character once its bytes arrive, and a stop string may end in (or be) that character.
        self._checked = safe
        safe -= self._stop_prefix(text[:safe])
        if safe <= self.sent:
            return "", False
        delta = text[self.sent : safe]
        self.sent = safe
        return delta, False

    def _stop_prefix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _flush(self) -> str:
        delta = self.text[self.sent :] if len(self.text) > self.sent else ""
        self.sent = max(self.sent, len(self.text))
        return delta

    def finish(self) -> str:
        """Everything held back (generation ended without a stop string)."""
        return self._flush()
