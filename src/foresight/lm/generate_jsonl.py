"""Batch generation from a JSONL file: `foresight generate --model DIR --input prompts.jsonl --output out.jsonl`.

Input, one JSON object per line (blank lines skipped):

    {"prompt": "Once upon a time"}                                   # text, encoded with <bos>
    {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7, "stop": ["\\n\\n"]}
    {"id": "q3", "prompt": "2 + 2 =", "max_new_tokens": 4, "logprobs": 2}

"prompt" (text) or "messages" (a Gemma chat, rendered with the chat template) is required; "id" is
copied to the output. Any `GenerationConfig` field except do_sample may be set per line and
overrides the command-line flags for that line (temperature 0 = greedy, as on the command line; a
line's stop_token_ids replace the default eos/<end_of_turn> ones).

Output, one line per prompt, in input order:

    {"index": 0, "id": ..., "text": "...", "tokens": [...], "finish_reason": "stop",
     "prompt_tokens": 5, "completion_tokens": 12,
     "logprobs": [{"token": 17, "logprob": -0.3, "top_logprobs": [{"token": 17, "logprob": -0.3}, ...]}]}

"logprobs" appears when asked for (see `GenerationConfig`); text and tokens exclude a stop string.
Prompts run in left-padded batches of up to --batch-size, each line with its own controls
(`foresight.lm.generate.run_generate` drives them; this module parses and formats).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from foresight.lm.completion import Completion
from foresight.lm.sampling import GenerationConfig


@dataclass(frozen=True)
class PromptLine:
    index: int  # 0-based position among the non-blank lines
    token_ids: tuple[int, ...]
    config: GenerationConfig
    id: object = None  # the line's "id", echoed back


def read_prompts(path, tokenizer, base: GenerationConfig) -> list[PromptLine]:
    """Parse and validate every line first, so a bad line 900 fails before any generation starts."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"cannot read --input {path}: {e.strerror or e}") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object with a 'prompt' or 'messages', got {type(d).__name__}")
        d = dict(d)
        prompt, messages, id_ = d.pop("prompt", None), d.pop("messages", None), d.pop("id", None)
        try:
            if (prompt is None) == (messages is None):
                raise ValueError("give exactly one of 'prompt' (text) or 'messages' (a chat)")
            if prompt is not None and not isinstance(prompt, str):
                raise ValueError(f"'prompt' must be a string, got {type(prompt).__name__}")
            if messages is not None and not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
                raise ValueError("'messages' must be a list of {'role': ..., 'content': ...} objects")
            ids = tokenizer.encode(prompt) if prompt is not None else tokenizer.encode_chat(messages)
            config = GenerationConfig.from_options(d, base)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
        prompts.append(PromptLine(len(prompts), tuple(ids), config, id_))
    return prompts


def batches(prompts: list[PromptLine], batch_size: int, max_positions: int) -> list[list[PromptLine]]:
    """Consecutive lines, at most batch_size per batch, and no more than the model's positions hold
    (the batch is padded to its longest prompt and decodes as long as its longest max_new_tokens)."""
    out: list[list[PromptLine]] = []
    for p in prompts:
        need = len(p.token_ids) + p.config.max_new_tokens
        if need > max_positions:
            raise ValueError(
                f"prompt {p.index}: {len(p.token_ids)} prompt tokens + max_new_tokens {p.config.max_new_tokens} "
                f"exceed max_position_embeddings={max_positions}"
            )
        if out and len(out[-1]) < batch_size:
            batch = out[-1] + [p]
            T = max(len(q.token_ids) for q in batch)
            if T + max(q.config.max_new_tokens for q in batch) <= max_positions:
                out[-1] = batch
                continue
        out.append([p])
    return out


def to_json(p: PromptLine, c: Completion) -> dict:
    d = {"index": p.index}
    if p.id is not None:
        d["id"] = p.id
    d.update(
        text=c.text,
        tokens=list(c.token_ids),
        finish_reason=c.finish_reason,
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
    )
    if p.config.logprobs is not None:
        d["logprobs"] = [
            {
                "token": t.token_id,
                "logprob": t.logprob,
                "top_logprobs": [{"token": i, "logprob": v} for i, v in t.top],
            }
            for t in c.logprobs or ()
        ]
    return d
