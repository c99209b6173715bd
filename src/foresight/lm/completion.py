"""One generated reply as text: incremental detokenization, stop strings, logprobs, finish reason.

`Reply` is fed one token at a time by the generation loop (`foresight.lm.generate.generate_steps`)
and decides when a stop string has been produced; `Reply.completion()` is the final result.

Stop strings are matched on the decoded text, so a stop string split across tokens (or inside one
token) is found. What is returned follows OpenAI: the text ends right before the first stop string,
and `token_ids` / `logprobs` hold only the tokens whose text lies wholly before it (a token that
straddles the boundary is dropped with the stop string). A stop *token* (eos, <end_of_turn>) is
different: it is kept as the last token id (its text, a special token, is not in `text`), as vLLM
does. The token tensor `generate` returns keeps every generated token, as HF `generate` with
`stop_strings` does: there the stop string only ends the row.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

# Finish reasons: a stop token or stop string, max_new_tokens, max_time.
STOP, LENGTH, TIME = "stop", "length", "time"


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the `top` most likely alternatives (see
    `GenerationConfig` for which distribution)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # ((token id, logprob), ...) best first, -inf ones left out

    @classmethod
    def ranked(cls, token_id: int, logprob: float, top_ids: list[int], top_logprobs: list[float], n: int):
        """The entry of one token from its row of `sampling.top_logprobs`: its n best alternatives,
        without the ones filtered to -inf (they were never candidates)."""
        top = tuple((i, v) for i, v in zip(top_ids[:n], top_logprobs[:n], strict=True) if v > float("-inf"))
        return cls(token_id, logprob, top)


@dataclass(frozen=True)
class Completion:
    """The result for one prompt."""

    text: str  # the reply, cut before the stop string; special tokens skipped
    token_ids: tuple[int, ...]  # generated ids (stop string's tokens excluded, stop token kept)
    finish_reason: str  # "stop", "length" (max_new_tokens) or "time" (max_time)
    prompt_tokens: int  # real (unpadded) prompt tokens
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token id when asked for
    matched_stop: str | int | None = None  # the stop string or stop token id that ended it

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class Reply:
    """The reply of one row, built token by token.

    Text is decoded incrementally (vLLM's offsets): the newest tokens are decoded together with the
    ones since the last released text, and new text is released only when it does not end in U+FFFD
    (a character whose bytes are not all there yet, e.g. byte-fallback tokens of an emoji).
    """

    def __init__(self, tokenizer=None, stop: tuple[str, ...] = (), prompt_tokens: int = 0):
        if stop and tokenizer is None:
            raise ValueError(f"stop strings {stop!r} need a tokenizer: pass tokenizer=...")
        self.tokenizer, self.stop, self.prompt_tokens = tokenizer, tuple(stop), prompt_tokens
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.text = ""  # released text (may still hold a stop string until `finish`)
        self._ends: list[int | None] = []  # len(text) once token i's bytes were released; None: pending
        self._released = 0  # the first _released entries of _ends are set (a prefix, non-decreasing)
        self._prefix = self._read = 0  # decode offsets: ids[_prefix:_read] produced released text
        self.stop_at: int | None = None  # index in text where the matched stop string starts
        self.matched_stop: str | int | None = None
        self.finish_reason: str | None = None

    def add(self, token_id: int, logprob: TokenLogprob | None = None) -> bool:
        """Append a generated token; True when a stop string is now complete (the row should end)."""
        self.token_ids.append(token_id)
        if logprob is not None:
            self.logprobs.append(logprob)
        self._ends.append(None)
        if self.tokenizer is None:
            return False
        before = len(self.text)
        self._release(final=False)
        return self._find_stop(before)

    def _release(self, final: bool) -> None:
        ids = self.token_ids
        prefix_text = self.tokenizer.decode(ids[self._prefix : self._read])
        new_text = self.tokenizer.decode(ids[self._prefix :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self.text += new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(ids)
        # Tokens whose bytes are now all decoded end where the released text ends.
        done = len(ids) if (final or self._read == len(ids)) else self._read
        for i in range(done - 1, -1, -1):
            if self._ends[i] is not None:
                break
            self._ends[i] = len(self.text)
        self._released = max(self._released, done)

    def _find_stop(self, before: int) -> bool:
        """Look for a stop string that ends in the text released since `before` (earliest start wins)."""
        if self.stop_at is not None or len(self.text) == before:
            return self.stop_at is not None
        hits = []
        for s in self.stop:
            i = self.text.find(s, max(0, before - len(s) + 1))
            if i >= 0:
                hits.append((i, s))
        if hits:
            self.stop_at, self.matched_stop = min(hits)
        return self.stop_at is not None

    def finish(self, reason: str, matched_stop: str | int | None = None) -> None:
        """End the reply: release any held-back bytes and cut at the stop string."""
        if self.finish_reason is not None:
            return
        if self.tokenizer is not None and self.stop_at is None:
            before = len(self.text)
            self._release(final=True)
            self._find_stop(before)
        if self.stop_at is not None:
            reason, matched_stop = STOP, self.matched_stop
        self.finish_reason, self.matched_stop = reason, matched_stop

    def kept_tokens(self) -> int:
        """How many token ids belong to the returned text (all of them unless a stop string was cut)."""
        return len(self.token_ids) if self.stop_at is None else self._tokens_within(self.stop_at)

    def stable_tokens(self) -> int:
        """How many tokens lie wholly in `stable_text()`: a stream sends their logprobs with that text."""
        return self._tokens_within(self.stable_length())

    def _tokens_within(self, end: int) -> int:  # O(log n): a stream asks once per token
        return bisect.bisect_right(self._ends, end, 0, self._released)

    def stable_length(self) -> int:
        """len(stable_text()), without copying the text."""
        if self.stop_at is not None:
            return self.stop_at
        if self.finish_reason is not None:
            return len(self.text)
        return len(self.text) - _held_back(self.text, self.stop)

    def stable_text(self) -> str:
        """Text that can no longer change: for streaming. Holds back a tail that could begin a stop string."""
        return self.text[: self.stable_length()]

    def completion(self) -> Completion:
        n = self.kept_tokens()
        return Completion(
            text=self.stable_text() if self.finish_reason else self.text,
            token_ids=tuple(self.token_ids[:n]),
            finish_reason=self.finish_reason or LENGTH,
            prompt_tokens=self.prompt_tokens,
            logprobs=tuple(self.logprobs[:n]) if self.logprobs else None,
            matched_stop=self.matched_stop,
        )


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
