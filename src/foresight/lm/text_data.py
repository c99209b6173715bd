"""Text data for LM training: corpora, a BPE tokenizer, memory-mapped token files, packed batches.

Pipeline (each step is cached on disk and reused when its inputs have not changed)::

    load_corpus("tinyshakespeare" | "builtin" | path)   -> list of documents (str)
    train_tokenizer(docs, vocab_size, path)             -> byte-level BPE, saved as tokenizer.json
    save_hf_tokenizer(tokenizer_path, folder)           -> the same tokenizer as a transformers.AutoTokenizer folder
    write_token_file(docs, tokenizer, path)             -> tokens.bin (np.memmap uint16/uint32) + tokens.json
    split_train_val(tokens, val_fraction)               -> contiguous cut: the last val_fraction is validation
    PackedSequences(tokens, seq_len)                    -> window i = tokens[i*T : i*T + T + 1]
    ShuffledOrder(n, seed).take(position, count)        -> the sample ids of the next batch

Packing: documents are concatenated with an ``<eos>`` after each one and cut into windows of
``seq_len + 1`` tokens that overlap by one token (inputs ``w[:-1]``, targets ``w[1:]``), so no token
is padding and every position has a target. Attention is not reset at document boundaries (as in
nanoGPT and most pretraining code); the ``<eos>`` marks the boundary for the model.

Shuffling: epoch ``e`` visits the windows in ``default_rng([seed, e]).permutation(n)``, so the whole
data order is a pure function of ``(seed, position)`` and resuming needs only the position (the
number of windows consumed so far), never a pickled iterator.

Corpora:
    "tinyshakespeare"  karpathy/char-rnn's input.txt, resolved through foresight.core.data
                       (--data-dir, $FORESIGHT_DATA, user cache, then a pinned, sha256-checked download).
    "builtin"          the docstrings of the CPython standard library's ``.py`` sources (found under
                       ``sysconfig.get_paths()["stdlib"]``): English prose that ships with every
                       Python, so a quick run needs no download. One document per module.
    a file path        one document (UTF-8 text).
    a folder path      every UTF-8 text file below it, sorted by relative path, one document each
                       (hidden files and files that do not decode as UTF-8 are skipped).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foresight.core.checkpoint import atomic_write_bytes, atomic_write_text
from foresight.core.data import DataNotFoundError, resolve
from foresight.core.datasets import TINYSHAKESPEARE

# Gemma's special-token ids (pad 0, eos 1, bos 2, unk 3), so Gemma2Config's defaults fit our tokenizers.
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
PAD_ID, EOS_ID, BOS_ID, UNK_ID = range(4)
# Gemma's chat-turn markers, reserved next (ids 4, 5) so a trained model can be chatted with (`generate --chat`).
CHAT_TOKENS = ("<start_of_turn>", "<end_of_turn>")
START_OF_TURN_ID, END_OF_TURN_ID = 4, 5

# Folders of the stdlib that are tests, demos or third-party code rather than documented modules.
_STDLIB_SKIP = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "turtledemo",
    "lib2to3",
    "__pycache__",
}


# ---------------------------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)  # parsing ~500 stdlib files takes seconds; the text never changes in-process
def _builtin_docs(max_chars: int | None) -> tuple[str, ...]:
    return tuple(_read_builtin(max_chars))


def builtin_corpus(max_chars: int | None = 1_000_000) -> list[str]:
    """Docstrings of the CPython stdlib, one document per module, in sorted path order.

    Modules are read with ``ast`` (never imported); module, class and function docstrings are joined
    by blank lines. ``max_chars`` caps the total (default about the size of tinyshakespeare; None: all
    of it, about 1.6 MB on CPython 3.11). The text depends on the Python version, so token files
    record its sha256.
    """
    return list(_builtin_docs(max_chars))


def _read_builtin(max_chars: int | None) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not _STDLIB_SKIP.intersection(p.relative_to(root).parts[:-1]))
    docs: list[str] = []
    total = 0
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are Python-2 fixtures or not UTF-8
        parts = [
            doc
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and (doc := ast.get_docstring(node))
        ]
        if not parts:
            continue
        text = "\n\n".join(parts) + "\n"
        if max_chars is not None and total + len(text) > max_chars:
            text = text[: max_chars - total]
        docs.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    if not docs:
        raise ValueError(f"found no stdlib docstrings under {root}")
    return docs


def _read_folder(folder: Path) -> list[str]:
    docs = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        try:
            docs.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue  # binary file: not text
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError(f"corpus folder {str(folder)!r} holds no UTF-8 text files")
    return docs


def pick_corpus(corpus: str, data_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """``(corpus, note)``: ``"auto"`` means tinyshakespeare where it resolves, else the built-in stdlib
    docstrings (offline and without the shared data), with a note saying so for the report."""
    if corpus != "auto":
        return corpus, ""
    try:
        resolve(TINYSHAKESPEARE.name, ["input.txt"], data_dir=data_dir)
        return "tinyshakespeare", ""
    except DataNotFoundError:
        return "builtin", "tinyshakespeare was not available, so the built-in stdlib docstrings were used. "


def load_corpus(corpus: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> list[str]:
    """The documents of ``corpus``: "tinyshakespeare", "builtin", a text file or a folder of them."""
    name = str(corpus)
    if name == "tinyshakespeare":
        folder = resolve(TINYSHAKESPEARE.name, ["input.txt"], data_dir=data_dir)
        return [(folder / "input.txt").read_text(encoding="utf-8")]
    if name == "builtin":
        return builtin_corpus()
    path = Path(name).expanduser()
    if path.is_dir():
        return _read_folder(path)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"corpus file {name!r} is not UTF-8 text: {e}") from None
        if not text:
            raise ValueError(f"corpus file {name!r} is empty")
        return [text]
    raise ValueError(f"corpus {name!r} is neither 'tinyshakespeare', 'builtin' nor an existing file or folder")


def corpus_sha256(docs: Sequence[str]) -> str:
    """Hash of the documents and their boundaries (changes if any text or split changes)."""
    h = hashlib.sha256()
    for d in docs:
        b = d.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def _line_chunks(docs: Sequence[str], chunk_chars: int = 1 << 16) -> list[str]:
    """Cut documents into ~64 KB pieces at line ends (byte-level BPE never merges across '\\n'+text)."""
    out = []
    for d in docs:
        buf: list[str] = []
        size = 0
        for line in d.splitlines(keepends=True):
            buf.append(line)
            size += len(line)
            if size >= chunk_chars:
                out.append("".join(buf))
                buf, size = [], 0
        if buf:
            out.append("".join(buf))
    return out


def train_tokenizer(docs: Sequence[str], vocab_size: int, path: str | os.PathLike | None = None):
    """Train a byte-level BPE tokenizer (HF ``tokenizers``) and save it as ``path`` (tokenizer.json).

    Byte-level: any text encodes (no <unk> in practice) and decoding is exact. The four Gemma
    special tokens take ids 0-3 and Gemma's chat tokens <start_of_turn>/<end_of_turn> ids 4-5, so the
    model `foresight train-lm` writes can be chatted with. Training is deterministic for a given corpus
    and vocab size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [*SPECIAL_TOKENS, *CHAT_TOKENS]
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size must be an int >= {256 + len(specials)} (bytes + specials), got {vocab_size!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_line_chunks(docs), trainer)
    if path is not None:
        text = tok.to_str(pretty=True)
        atomic_write_text(path, text)
    return tok


def load_tokenizer(path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` from a tokenizer.json file (or a folder holding one)."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"no tokenizer.json at {str(path)!r}")
    return Tokenizer.from_file(str(path))


def tokenizer_sha256(path_or_tokenizer) -> str:
    """sha256 of a tokenizer's canonical JSON (key-sorted, so formatting differences do not count).

    The post-processor (what ``encode(add_special_tokens=True)`` adds, e.g. <bos>) is left out: token
    files and teacher caches are written without it, so it changes no stored id, and the copy that
    :func:`save_hf_tokenizer` gives a <bos> post-processor hashes like the tokenizer it was made from.
    """
    if isinstance(path_or_tokenizer, str | os.PathLike):
        path = Path(path_or_tokenizer)
        if path.is_dir():
            path = path / "tokenizer.json"
        text = path.read_text(encoding="utf-8")
    else:
        text = path_or_tokenizer.to_str()
    d = json.loads(text)
    d["post_processor"] = None  # what tokenizers writes when there is none
    canon = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def save_hf_tokenizer(tokenizer_path: str | os.PathLike, folder: str | os.PathLike, model_max_length: int) -> None:
    """Write ``folder``/tokenizer.json and tokenizer_config.json for ``transformers.AutoTokenizer``.

    The folder loads with the ids :class:`foresight.lm.tokenizer.Gemma2Tokenizer` gives, <bos> first:
      * tokenizer_config.json names the generic fast-tokenizer class. Without it, config.json's
        model_type gemma2 makes transformers rebuild the vocabulary as a SentencePiece GemmaTokenizer,
        whose normalizer turns our byte-level spaces into <unk>.
      * tokenizer.json gains a post-processor that prepends <bos> (as Gemma's own tokenizer.json has):
        transformers 5 ignores tokenizer_config's add_bos_token when a tokenizer.json is present.
        An existing post-processor is kept.
      * with both chat tokens in the vocabulary, the Gemma chat template goes into tokenizer_config.json,
        so transformers' ``apply_chat_template`` formats chats as ``Gemma2Tokenizer.apply_chat_template``.
    """
    from tokenizers import processors

    from foresight.lm.tokenizer import GEMMA_CHAT_TEMPLATE

    folder = Path(folder)
    tok = load_tokenizer(tokenizer_path)
    present = {t: tok.token_to_id(t) for t in (*SPECIAL_TOKENS, *CHAT_TOKENS) if tok.token_to_id(t) is not None}
    if tok.post_processor is None and "<bos>" in present:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", present["<bos>"])]
        )
    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for key, token in (("bos_token", "<bos>"), ("eos_token", "<eos>"), ("pad_token", "<pad>"), ("unk_token", "<unk>")):
        if token in present:
            config[key] = token
    config.update(
        add_bos_token="<bos>" in present,  # documents the post-processor for readers of transformers 4
        add_eos_token=False,
        clean_up_tokenization_spaces=False,  # transformers 4 would otherwise glue " ." to "." when decoding
        model_max_length=model_max_length,
        padding_side="left",  # batched generation wants every prompt's last token in the last column
    )
    if all(t in present for t in CHAT_TOKENS):
        config["chat_template"] = GEMMA_CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "tokenizer.json", tok.to_str(pretty=True))
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Memory-mapped token files
# ---------------------------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (V <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class TokenFile:
    """A flat token stream on disk: ``<path>`` (raw ids) and ``<path>.json`` (dtype, count, provenance)."""

    path: Path
    meta: dict

    @property
    def tokens(self) -> np.ndarray:  # [N] uint16/uint32, read-only memmap
        return np.memmap(self.path, dtype=np.dtype(self.meta["dtype"]), mode="r", shape=(self.meta["n_tokens"],))

    @classmethod
    def open(cls, path: str | os.PathLike) -> TokenFile:
        path = Path(path)
        meta_path = path.with_suffix(path.suffix + ".json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"no token file at {path} (needs {path.name} and {meta_path.name})")
        meta = json.loads(meta_path.read_text())
        expected = meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize
        if path.stat().st_size != expected:
            raise ValueError(f"token file {path} has {path.stat().st_size} bytes, expected {expected}")
        return cls(path, meta)


def write_token_file(docs: Sequence[str], tokenizer, path: str | os.PathLike, **provenance) -> TokenFile:
    """Tokenise ``docs`` (an <eos> after each) into a memmap file, atomically; return it.

    ``provenance`` (e.g. tokenizer_sha256, corpus_sha256) is stored in the sidecar JSON so callers can
    decide whether an existing file is still valid.
    """
    path = Path(path)
    vocab_size = tokenizer.get_vocab_size()
    dtype = token_dtype(vocab_size)
    pieces = []
    for d in docs:
        encs = tokenizer.encode_batch(_line_chunks([d]), add_special_tokens=False)
        pieces.extend(np.asarray(e.ids, dtype=dtype) for e in encs)
        pieces.append(np.asarray([EOS_ID], dtype=dtype))
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)

    def write(tmp: str) -> None:
        mm = np.memmap(tmp, dtype=dtype, mode="w+", shape=(len(ids),))
        mm[:] = ids
        mm.flush()
        del mm

    atomic_write_bytes(path, write)
    meta = {
        "dtype": dtype.name,
        "n_tokens": int(len(ids)),
        "vocab_size": vocab_size,
        "n_docs": len(docs),
        **provenance,
    }
    atomic_write_text(path.with_suffix(path.suffix + ".json"), json.dumps(meta, indent=2, sort_keys=True))
    return TokenFile(path, meta)


def split_train_val(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous cut: the first ``1 - val_fraction`` of the stream trains, the rest validates (views)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    cut = int(round(len(tokens) * (1.0 - val_fraction)))
    return tokens[:cut], tokens[cut:]


# ---------------------------------------------------------------------------------------------
# Packed sequences and deterministic order
# ---------------------------------------------------------------------------------------------


class PackedSequences:
    """Non-padded training windows over a token stream.

    Window ``i`` is ``tokens[i*T : i*T + T + 1]`` (T = seq_len): inputs are its first T tokens and
    targets its last T, so consecutive windows share one token and every token but the first is a
    target exactly once.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int):
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        n = (len(tokens) - 1) // seq_len
        if n < 1:
            raise ValueError(f"{len(tokens)} tokens are too few for one window of seq_len={seq_len} (+1)")
        self.tokens, self.seq_len, self._n = tokens, seq_len, n

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"PackedSequences(n={self._n}, seq_len={self.seq_len}, tokens={len(self.tokens)})"

    def window(self, i: int) -> np.ndarray:  # [T + 1]
        if not 0 <= i < self._n:
            raise IndexError(f"window {i} out of range [0, {self._n})")
        return np.asarray(self.tokens[i * self.seq_len : i * self.seq_len + self.seq_len + 1])

    def batch(self, ids: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, targets), both [B, T] int64, for window ids ``ids``."""
        w = torch.from_numpy(np.stack([self.window(int(i)) for i in ids]).astype(np.int64))  # [B, T + 1]
        return w[:, :-1], w[:, 1:]


class ShuffledOrder:
    """An endless, reproducible stream of window ids: epoch e is ``default_rng([seed, e]).permutation(n)``."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n < 1:
            raise ValueError(f"need at least one window to shuffle, got n={n}")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = (
                np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
            )
            self._epoch = epoch
        return self._perm

    def take(self, position: int, count: int) -> np.ndarray:
        """The ``count`` window ids starting at stream position ``position`` (crossing epochs if needed)."""
        out = np.empty(count, dtype=np.int64)
        for j in range(count):
            epoch, offset = divmod(position + j, self.n)
            out[j] = self._permutation(epoch)[offset]
        return out


# ---------------------------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------------------------


@dataclass
class TextData:
    """A corpus prepared for training: tokenizer, token stream, and packed train/val windows."""

    tokenizer: object  # tokenizers.Tokenizer
    tokenizer_path: Path
    tokenizer_sha256: str
    vocab_size: int
    tokens: np.ndarray  # [N] memmap
    train: PackedSequences
    val: PackedSequences


def prepare_text_data(
    corpus: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 1024,
    seq_len: int = 128,
    val_fraction: float = 0.1,
    tokenizer_path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> TextData:
    """Load ``corpus``, train (or load) a tokenizer and tokenise once into ``out_dir``; reuse both later.

    ``out_dir/tokenizer.json`` is trained when ``tokenizer_path`` is None and it does not exist yet,
    on the whole corpus (BPE merges see the validation text; the model never trains on it).
    ``out_dir/tokens.bin`` is rebuilt whenever the corpus or tokenizer hash differs from the one
    recorded beside it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = load_corpus(corpus, data_dir)
    corpus_sha = corpus_sha256(docs)
    if tokenizer_path is None:
        tokenizer_path = out_dir / "tokenizer.json"
        if not tokenizer_path.is_file():
            train_tokenizer(docs, vocab_size, tokenizer_path)
    tokenizer_path = Path(tokenizer_path)
    if tokenizer_path.is_dir():
        tokenizer_path = tokenizer_path / "tokenizer.json"
    tokenizer = load_tokenizer(tokenizer_path)
    tok_sha = tokenizer_sha256(tokenizer_path)
    token_path = out_dir / "tokens.bin"
    try:
        tf = TokenFile.open(token_path)
        stale = tf.meta.get("tokenizer_sha256") != tok_sha or tf.meta.get("corpus_sha256") != corpus_sha
    except (FileNotFoundError, ValueError, json.JSONDecodeError, KeyError):
        stale = True
    if stale:
        tf = write_token_file(
            docs,
            tokenizer,
            token_path,
            tokenizer_sha256=tok_sha,
            corpus_sha256=corpus_sha,
            corpus=str(corpus),
        )
    tokens = tf.tokens
    train_tokens, val_tokens = split_train_val(tokens, val_fraction)
    return TextData(
        tokenizer=tokenizer,
        tokenizer_path=tokenizer_path,
        tokenizer_sha256=tok_sha,
        vocab_size=tokenizer.get_vocab_size(),
        tokens=tokens,
        train=PackedSequences(train_tokens, seq_len),
        val=PackedSequences(val_tokens, seq_len),
    )
