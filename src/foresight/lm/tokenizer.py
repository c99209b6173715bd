"""Gemma tokenizer: `tokenizer.json` (HF `tokenizers`) or `tokenizer.model` (sentencepiece).

Both files describe the same 256000-token SentencePiece BPE vocabulary in Gemma checkpoints; the
JSON one is preferred because `tokenizers` needs no extra dependency. Special tokens (Gemma 2 ids):
<pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, <start_of_turn> 106, <end_of_turn> 107. Ids are looked
up by token string, never assumed, so tiny test vocabularies and the BPE tokenizers `foresight train-lm`
trains work the same way.

Parity with `transformers.AutoTokenizer` on the real Gemma 2 tokenizer.json (tests/lm/test_tokenizer_parity.py):
`encode` adds <bos> as HF does by default; `decode(skip_special_tokens=True)` drops the same ids as HF
(the special tokens of tokenizer.json plus the named ones: bos, eos, pad, unk, mask); `encode_batch`
pads like `tokenizer(texts, padding=True, return_tensors="pt")`.

Chat format: GEMMA_CHAT_TEMPLATE below is the instruction-tuned checkpoints' Jinja template. We
implement its logic in plain Python (no jinja2 dependency), checked against transformers rendering
that template, including its errors: a leading system message raises "System role not supported",
and message i must be a user turn exactly when i is even.
    <bos><start_of_turn>user\\n{text}<end_of_turn>\\n<start_of_turn>model\\n{reply}<end_of_turn>\\n ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

# The Gemma (1 and 2) instruction-tuned chat template, byte for byte as in the checkpoints'
# tokenizer_config.json (and chat_template.jinja of the gemma2-tokenizer dataset).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
DATASET = "gemma2-tokenizer"  # the real tokenizer's files, registered in foresight.core.datasets


class Gemma2Tokenizer:
    """Encode/decode text and format chats. Build with `from_pretrained(dir)`, `from_file(file)` or `from_dataset()`."""

    def __init__(
        self,
        backend,
        *,
        bos_token: str = "<bos>",
        eos_token: str = "<eos>",
        pad_token: str = "<pad>",
        unk_token: str = "<unk>",
        mask_token: str = "<mask>",
        special_tokens: Iterable[str] = (),
        chat_template: str | None = None,
    ):
        """`special_tokens`: further strings a tokenizer_config names special; `chat_template`: the
        template that came with the tokenizer (None: none did, Gemma 2's is assumed)."""
        self._backend = backend
        self._is_spm = type(backend).__module__.startswith("sentencepiece")
        self.bos_token = bos_token
        self.bos_id = self.token_to_id(bos_token)
        self.eos_id = self.token_to_id(eos_token)
        self.pad_id = self.token_to_id(pad_token)
        self.start_of_turn_id = self.token_to_id(START_OF_TURN)
        self.end_of_turn_id = self.token_to_id(END_OF_TURN)
        self.chat_template = chat_template
        named = (bos_token, eos_token, pad_token, unk_token, mask_token, START_OF_TURN, END_OF_TURN, *special_tokens)
        ids = {self.token_to_id(t) for t in named}
        if not self._is_spm:  # tokens tokenizer.json marks special, which HF's decode skips too
            ids |= {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        self.special_ids = frozenset(i for i in ids if i is not None)

    # --- construction --------------------------------------------------------------------------

    @classmethod
    def from_file(cls, file: str | os.PathLike, **special_tokens) -> Gemma2Tokenizer:
        """Load tokenizer.json or tokenizer.model (a folder goes through `from_pretrained`)."""
        file = Path(file)
        if file.is_dir():
            return cls.from_pretrained(file)
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

        Special token strings and the chat template come from tokenizer_config.json /
        special_tokens_map.json / chat_template.jinja when present (as transformers reads them).
        """
        path = Path(path)
        kwargs = _tokenizer_config(path)
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                return cls.from_file(path / name, **kwargs)
        raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in {path}")

    @classmethod
    def from_dataset(cls, data_dir: str | os.PathLike | None = None) -> Gemma2Tokenizer:
        """The real Gemma 2 tokenizer, resolved like every dataset (--data-dir, $FORESIGHT_DATA, user cache,
        then a pinned download); offline, a DataNotFoundError says which files to put where."""
        import foresight.core.datasets  # noqa: F401  (registers the dataset)
        from foresight.core.data import resolve

        return cls.from_pretrained(resolve(DATASET, data_dir=data_dir))

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
        return self._with_bos(ids) if add_bos else ids

    def _with_bos(self, ids: list[int]) -> list[int]:
        if self.bos_id is None:
            raise ValueError("add_bos=True but the tokenizer has no <bos> token")
        return [self.bos_id, *ids]

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True, padding_side: str = "left") -> dict:
        """{"input_ids", "attention_mask"}: [B, T] int64 tensors, each row padded with <pad> to the longest.

        Left padding (the default, as HF's Gemma tokenizer) keeps every prompt's last token in the last
        column, which is what batched generation wants; the mask is 1 on real tokens, 0 on padding.
        """
        import torch

        if isinstance(texts, str) or not texts:
            raise ValueError(f"encode_batch takes a non-empty list of strings, got {texts!r:.80}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if self.pad_id is None:
            raise ValueError("the tokenizer has no <pad> token, so it cannot pad a batch")
        if self._is_spm:
            rows = [self.encode(t, add_bos) for t in texts]
        else:
            rows = [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]
            rows = [self._with_bos(r) for r in rows] if add_bos else rows
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for b, r in enumerate(rows):
            cols = slice(T - len(r), T) if padding_side == "left" else slice(0, len(r))
            ids[b, cols] = torch.tensor(r, dtype=torch.long)
            mask[b, cols] = 1
        return {"input_ids": ids, "attention_mask": mask}

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

    def decode_batch(self, rows, skip_special_tokens: bool = True) -> list[str]:
        """`decode` of each row of a [B, T] tensor or list of id lists (padding is a special token)."""
        return [self.decode(r, skip_special_tokens) for r in (rows.tolist() if hasattr(rows, "tolist") else rows)]

    # --- chat ----------------------------------------------------------------------------------

    def apply_chat_template(
        self, messages: Sequence[Mapping], add_generation_prompt: bool = True, *, add_bos: bool = False
    ) -> str:
        """Gemma chat text for messages [{"role": "user"|"assistant"|..., "content": str}].

        The text of GEMMA_CHAT_TEMPLATE without its leading <bos> (which `encode` adds as an id), or
        with it when `add_bos`: then it equals transformers' `apply_chat_template(..., tokenize=False)`.
        """
        if self.chat_template is not None and "".join(self.chat_template.split()) != _SQUASHED_TEMPLATE:
            raise ValueError(
                "this tokenizer came with a chat template that is not Gemma 2's; foresight renders only "
                "Gemma 2's (render others with transformers' apply_chat_template)"
            )
        if not messages:
            raise ValueError("Cannot apply chat template to an empty conversation: give at least one message")
        for i, m in enumerate(messages):
            if not (isinstance(m, Mapping) and all(isinstance(m.get(k), str) for k in ("role", "content"))):
                raise ValueError(f"message {i} must be a dict with str 'role' and 'content', got {m!r:.80}")
        if messages[0]["role"] == "system":
            raise ValueError(
                "System role not supported: message 0 has role 'system'; Gemma 2 supports only user/assistant "
                "turns (put system instructions into the first user turn)"
            )
        parts = [self.bos_token] if add_bos else []
        for i, m in enumerate(messages):
            # As the template: even turns are the user's and no odd one is; other odd roles render as given.
            if (m["role"] == "user") != (i % 2 == 0):
                raise ValueError(
                    "Conversation roles must alternate user/assistant/user/assistant/...: "
                    f"message {i} has role {m['role']!r}"
                )
            role = "model" if m["role"] == "assistant" else m["role"]
            parts.append(f"{START_OF_TURN}{role}\n{m['content'].strip()}{END_OF_TURN}\n")  # jinja's trim = strip
        if add_generation_prompt:
            parts.append(f"{START_OF_TURN}model\n")
        return "".join(parts)

    def encode_chat(self, messages: Sequence[Mapping], add_generation_prompt: bool = True) -> list[int]:
        """Ids of the chat: <bos> then the template's text, as HF's `apply_chat_template(tokenize=True)`."""
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


_SQUASHED_TEMPLATE = "".join(GEMMA_CHAT_TEMPLATE.split())  # templates compare without their whitespace


def _tokenizer_config(path: Path) -> dict:
    """Constructor arguments from tokenizer_config.json / special_tokens_map.json / chat_template.jinja."""
    found: dict = {}
    extra: list[str] = []
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later file wins
        file = path / name
        if not file.is_file():
            continue
        try:
            d = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{file} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{file} must hold a JSON object, got {type(d).__name__}")
        for key in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token"):
            value = _token_string(d.get(key))
            if value is not None:
                found[key] = value
        # v4 spells the rest additional_special_tokens (a list); v5 extra_special_tokens (a list or a dict).
        for key in ("additional_special_tokens", "extra_special_tokens"):
            value = d.get(key)
            values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
            extra += [s for s in map(_token_string, values) if s is not None]
        template = d.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next(
                (t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None
            )
        if isinstance(template, str):
            found["chat_template"] = template
    if (path / "chat_template.jinja").is_file():  # transformers >= 4.52 writes it; it wins over the config's
        found["chat_template"] = (path / "chat_template.jinja").read_text(encoding="utf-8")
    if extra:
        found["special_tokens"] = tuple(extra)
    return found


def _token_string(value) -> str | None:
    if isinstance(value, dict):  # {"content": "<bos>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None
