"""Gemma tokenizer: `tokenizer.json` (HF `tokenizers`) or `tokenizer.model` (sentencepiece).

Both files describe the same 256000-token SentencePiece BPE vocabulary in Gemma checkpoints; the
JSON one is preferred because `tokenizers` needs no extra dependency. Special tokens (Gemma 2 ids):
<pad> 0, <eos> 1, <bos> 2, <start_of_turn> 106, <end_of_turn> 107. Ids are looked up by token
string, never assumed, so tiny test vocabularies work the same way.

Chat format (HF chat template of the instruction-tuned checkpoints):
    <bos><start_of_turn>user\\n{text}<end_of_turn>\\n<start_of_turn>model\\n{reply}<end_of_turn>\\n ...
Gemma 2 has no system role: the template rejects it, and so do we.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"


class Gemma2Tokenizer:
    """Encode/decode text and format chats. Build with `from_pretrained(dir)` or `from_file(file)`."""

    def __init__(
        self,
        backend,
        *,
        bos_token: str = "<bos>",
        eos_token: str = "<eos>",
        pad_token: str = "<pad>",
    ):
        self._backend = backend
        self._is_spm = type(backend).__module__.startswith("sentencepiece")
        self.bos_id = self.token_to_id(bos_token)
        self.eos_id = self.token_to_id(eos_token)
        self.pad_id = self.token_to_id(pad_token)
        self.start_of_turn_id = self.token_to_id(START_OF_TURN)
        self.end_of_turn_id = self.token_to_id(END_OF_TURN)
        self.special_ids = frozenset(
            i
            for i in (self.bos_id, self.eos_id, self.pad_id, self.start_of_turn_id, self.end_of_turn_id)
            if i is not None
        )

    # --- construction --------------------------------------------------------------------------

    @classmethod
    def from_file(cls, file: str | os.PathLike, **special_tokens) -> Gemma2Tokenizer:
        file = Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file {file} does not exist")
        if file.suffix == ".json":
            from tokenizers import Tokenizer

            try:
                backend = Tokenizer.from_file(str(file))
            except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
                raise ValueError(f"cannot read tokenizer {file}: {e}") from None
        elif file.suffix == ".model":
            import sentencepiece as spm

            backend = spm.SentencePieceProcessor()
            try:
                backend.Load(str(file))
            except (OSError, RuntimeError) as e:
                raise ValueError(f"cannot read sentencepiece model {file}: {e}") from None
        else:
            raise ValueError(f"unknown tokenizer file type {file.name!r}: expected tokenizer.json or .model")
        return cls(backend, **special_tokens)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Gemma2Tokenizer:
        """Load from a checkpoint directory: tokenizer.json, else tokenizer.model.

        Special token strings come from tokenizer_config.json / special_tokens_map.json when present.
        """
        path = Path(path)
        special = _special_tokens(path)
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                return cls.from_file(path / name, **special)
        raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in {path}")

    # --- vocabulary ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        if self._is_spm:
            return self._backend.GetPieceSize()
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        if self._is_spm:
            i = self._backend.PieceToId(token)
            # sentencepiece maps unknown pieces to unk; only an exact round trip counts as found.
            return i if self._backend.IdToPiece(i) == token else None
        return self._backend.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        return self._backend.IdToPiece(i) if self._is_spm else self._backend.id_to_token(i)

    # --- text <-> ids --------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`; special-token strings in the text (e.g. <start_of_turn>) map to their ids."""
        if self._is_spm:
            ids = list(self._backend.EncodeAsIds(text))
        else:
            ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True but the tokenizer has no <bos> token")
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        if not self._is_spm:
            return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        # sentencepiece silently drops control pieces (<bos>, <eos>, <pad>) when decoding; write
        # them out as text between decoded runs so skip_special_tokens=False shows them as HF does.
        parts, run = [], []
        for i in ids:
            if self._backend.IsControl(i):
                parts += [self._backend.DecodeIds(run), self._backend.IdToPiece(i)]
                run = []
            else:
                run.append(i)
        parts.append(self._backend.DecodeIds(run))
        return "".join(parts)

    # --- chat ----------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Gemma chat text (without <bos>) for messages [{"role": "user"|"assistant"|"model", "content": str}]."""
        parts = []
        for i, m in enumerate(messages):
            role = {"assistant": "model"}.get(m["role"], m["role"])
            if role not in ("user", "model"):
                raise ValueError(
                    f"message {i} has role {m['role']!r}; Gemma 2 supports only user/assistant turns "
                    "(put system instructions into the first user turn)"
                )
            if (role == "user") != (i % 2 == 0):
                raise ValueError(f"message {i} has role {m['role']!r}: roles must alternate user/assistant")
            parts.append(f"{START_OF_TURN}{role}\n{m['content'].strip()}{END_OF_TURN}\n")
        if add_generation_prompt:
            parts.append(f"{START_OF_TURN}model\n")
        return "".join(parts)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        for token, i in ((START_OF_TURN, self.start_of_turn_id), (END_OF_TURN, self.end_of_turn_id)):
            if i is None:
                raise ValueError(f"the tokenizer has no {token} token, so it cannot encode Gemma chats")
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), add_bos=True)

    def __repr__(self) -> str:
        kind = "sentencepiece" if self._is_spm else "tokenizers"
        return (
            f"Gemma2Tokenizer({kind}, vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
            f"pad={self.pad_id}, end_of_turn={self.end_of_turn_id})"
        )


def _special_tokens(path: Path) -> dict[str, str]:
    """bos/eos/pad token strings from tokenizer_config.json or special_tokens_map.json, if present."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later file wins
        file = path / name
        if not file.is_file():
            continue
        try:
            d = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{file} is not valid JSON: {e}") from None
        for key in ("bos_token", "eos_token", "pad_token"):
            value = d.get(key)
            if isinstance(value, dict):  # {"content": "<bos>", "lstrip": false, ...}
                value = value.get("content")
            if isinstance(value, str):
                found[key] = value
    return found
