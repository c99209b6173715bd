"""Knowledge distillation for Gemma 2 students: pure loss functions, a sparse top-k teacher cache, teachers.

Gemma 2 trains its 2B and 9B models "with knowledge distillation (Hinton et al., 2015) instead of next
token prediction" (docs/gemma2.md, "Distillation"): the one-hot target at every position is replaced by the
teacher's next-token distribution. Per position t, with teacher logits z_t and student logits s_t
(both taken AFTER the final soft-cap, as every reference does) and temperature τ::

    p_t = softmax(z_t / τ)          q_t = softmax(s_t / τ)
    kd  = τ² · mean_t KL(p_t ‖ q_t)  = τ² · mean_t Σ_v p_t(v) (log p_t(v) − log q_t(v))
    ce  = mean_t −log softmax(s_t)[y_t]                      (next-token cross-entropy, τ = 1)
    loss = α · kd + (1 − α) · ce

τ² convention (Hinton et al. 2015, §2): the KL term is multiplied by τ², so its gradient w.r.t. the
student logits, τ · (q_t − p_t), keeps the same scale as τ changes, and α mixes two terms of comparable
size. At τ = 1 the factor is 1 and ``kd`` is the plain KL, which differs from the soft-target
cross-entropy −Σ p log q of the paper (docs/gemma2.md) by the teacher entropy, a constant with zero gradient. α = 1 is
Gemma 2's "instead of next token prediction"; α = 0 is plain next-token prediction.

Sparse teacher (top-k cache): storing V logits per token is too much, so the cache keeps the k largest
teacher logits per position and their ids. The teacher distribution is then renormalised over those k
ids, ``p̃ = softmax(z[topk] / τ)`` (the dropped mass is spread proportionally over the kept ids; the
ranking is the same for every τ > 0, so the cache does not depend on τ), and the KL term is taken over
the k kept ids only: ``Σ_{v∈topk} p̃(v) (log p̃(v) − log q(v))`` with ``q`` the student's FULL softmax.
That is ≥ 0, equals the dense KL when k = V, and pushes the student's mass onto the teacher's top k.
``ce`` always uses the true next token, which need not be in the top k.

Shapes: N tokens (B·T flattened), V vocab, k kept logits.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from foresight.core.checkpoint import atomic_write_bytes, atomic_write_text

IGNORE_INDEX = -100
CACHE_FORMAT = "foresight-topk-logits-v1"


@dataclass
class LMLoss:
    """A training loss and its named terms (scalars). ``kd`` is None for pure next-token training."""

    loss: torch.Tensor  # what to backpropagate
    ce: torch.Tensor  # next-token cross-entropy (nats/token) on the same batch
    kd: torch.Tensor | None = None  # τ²·KL(teacher ‖ student), when a teacher is present
    # Further named scalars for the training log (e.g. MoE router diagnostics); the trainer averages
    # each over the step's micro-batches (and ranks) and logs it under its name. Not backpropagated.
    extra: dict[str, torch.Tensor | float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Pure loss functions
# ---------------------------------------------------------------------------------------------


def _flat(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree on [B, T]")
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)  # [N, V], [N]


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token cross-entropy over non-ignored targets.

    logits [..., V], targets [...] (already shifted: targets[t] is the token after input t).

    No upcast: the logits' own dtype is used (Gemma2 returns fp32 logits already).
    """
    flat_logits, flat_targets = _flat(logits, targets)
    return F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index)


MAX_LOG_PPL = 50.0  # exp(50) ~ 5e21: a diverged run reports a huge, finite perplexity instead of inf


def perplexity(nll: float) -> float:
    """``exp(nll)`` of a mean next-token NLL in nats/token, capped at ``exp(MAX_LOG_PPL)`` (JSON has no inf)."""
    if nll != nll:
        raise ValueError("nll is NaN; a perplexity needs a finite mean NLL")
    return math.exp(min(float(nll), MAX_LOG_PPL))


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def kd_kl(
    student_logits: torch.Tensor,  # [N, V]
    teacher_logits: torch.Tensor,  # [N, V]; -inf entries are allowed (zero teacher probability)
    temperature: float = 1.0,
) -> torch.Tensor:  # [N]: KL(p_T^τ ‖ q_S^τ) per token, WITHOUT the τ² factor
    """Per-token forward KL from the dense teacher distribution to the student's, at temperature τ."""
    _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ (same vocabulary required)"
        )
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    p = F.softmax(teacher_logits.detach().float() / temperature, dim=-1).to(log_q.dtype)
    # xlogy(p, p) = p log p with 0 log 0 = 0, so a one-hot teacher (−inf logits) gives no NaN.
    return (torch.special.xlogy(p, p) - p * log_q).sum(-1)


def sparse_kd_kl(
    student_logits: torch.Tensor,  # [N, V]
    topk_values: torch.Tensor,  # [N, k] teacher logits of the kept ids
    topk_indices: torch.Tensor,  # [N, k] their token ids
    temperature: float = 1.0,
) -> torch.Tensor:  # [N]
    """Per-token KL from the top-k-renormalised teacher to the student's full softmax (see module doc)."""
    _check_temperature(temperature)
    if topk_values.shape != topk_indices.shape or topk_values.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"top-k values {tuple(topk_values.shape)}, indices {tuple(topk_indices.shape)} and "
            f"student logits {tuple(student_logits.shape)} disagree"
        )
    log_q = F.log_softmax(student_logits / temperature, dim=-1)  # [N, V]
    log_q_k = log_q.gather(-1, topk_indices.long())  # [N, k]
    log_p = F.log_softmax(topk_values.detach().float() / temperature, dim=-1).to(log_q.dtype)  # renormalised
    p = log_p.exp()
    return (torch.special.xlogy(p, p) - p * log_q_k).sum(-1)


def distillation_loss(
    student_logits: torch.Tensor,  # [B, T, V]
    targets: torch.Tensor,  # [B, T] next tokens
    *,
    teacher_logits: torch.Tensor | None = None,  # [B, T, V] dense teacher, or
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,  # ([B, T, k] values, [B, T, k] ids)
    temperature: float = 1.0,
    alpha: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> LMLoss:
    """``α · τ² · KL(teacher ‖ student) + (1 − α) · CE``, averaged over positions whose target is not ignored.

    Exactly one of ``teacher_logits`` / ``teacher_topk`` must be given. Pure function: no state, no
    gradient into the teacher.
    """
    if (teacher_logits is None) == (teacher_topk is None):
        raise ValueError("pass exactly one of teacher_logits and teacher_topk")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    s, y = _flat(student_logits, targets)  # [N, V], [N]
    keep = y != ignore_index  # [N]
    if teacher_logits is not None:
        kl = kd_kl(s, teacher_logits.reshape(-1, teacher_logits.shape[-1]), temperature)  # [N]
    else:
        values, ids = teacher_topk
        k = values.shape[-1]
        kl = sparse_kd_kl(s, values.reshape(-1, k), ids.reshape(-1, k), temperature)
    n = keep.sum().clamp(min=1)
    kd = temperature**2 * (kl * keep).sum() / n
    ce = F.cross_entropy(s, y, ignore_index=ignore_index) if keep.any() else s.sum() * 0
    if alpha == 1.0:
        loss = kd  # skip (1 - α)·ce so no gradient flows through it at all
    elif alpha == 0.0:
        loss = ce
    else:
        loss = alpha * kd + (1.0 - alpha) * ce
    return LMLoss(loss=loss, ce=ce.detach(), kd=kd.detach())


# ---------------------------------------------------------------------------------------------
# Top-k teacher cache (safetensors shards; nothing is pickled)
# ---------------------------------------------------------------------------------------------


def windows_sha256(tokens: np.ndarray, seq_len: int) -> str:
    """Fingerprint of the token windows a cache was computed on (the stream and the window length)."""
    h = hashlib.sha256(np.ascontiguousarray(tokens).view(np.uint8).tobytes())
    h.update(f"|{np.asarray(tokens).dtype.name}|{seq_len}".encode())
    return h.hexdigest()


class TopKCache:
    """The teacher's k largest (soft-capped) logits at every position of every training window.

    Layout of ``dir``::

        meta.json                 format, k, vocab_size, seq_len, n_windows, shard_windows, dtypes,
                                  tokenizer_sha256, windows_sha256, teacher (a description), complete
        shard-00000.safetensors   "values" [n, T, k] (float32 or bfloat16), "indices" [n, T, k] int16/int32
        ...                       shard s holds windows [s·shard_windows, (s+1)·shard_windows)

    Shards are written atomically, so an interrupted :meth:`build` resumes at the first missing shard.
    Readers load a shard at first use and keep it in memory.
    """

    def __init__(self, dir: str | os.PathLike):
        self.dir = Path(dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no top-k cache at {self.dir} (meta.json missing)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.dir} is not a {CACHE_FORMAT} cache (format={self.meta.get('format')!r})")
        self._shards: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    k = property(lambda self: self.meta["k"])
    vocab_size = property(lambda self: self.meta["vocab_size"])
    complete = property(lambda self: bool(self.meta.get("complete")))

    def __repr__(self) -> str:
        m = self.meta
        return f"TopKCache(dir={str(self.dir)!r}, k={m['k']}, V={m['vocab_size']}, windows={m['n_windows']})"

    def _shard_path(self, s: int) -> Path:
        return self.dir / f"shard-{s:05d}.safetensors"

    def _shard(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        if s not in self._shards:
            from safetensors.torch import load_file

            t = load_file(str(self._shard_path(s)))
            self._shards[s] = (t["values"], t["indices"])
        return self._shards[s]

    def check(
        self,
        *,
        vocab_size: int,
        seq_len: int,
        tokenizer_sha256: str | None = None,
        windows_sha256: str | None = None,
    ) -> None:
        """Raise ValueError if this cache was not computed for the given student data and vocabulary."""
        m = self.meta
        if not self.complete:
            raise ValueError(f"top-k cache {self.dir} is incomplete; rebuild it (build resumes)")
        if m["vocab_size"] != vocab_size:
            raise ValueError(
                f"tokenizer mismatch: cache vocab_size={m['vocab_size']} but student vocab_size={vocab_size}"
            )
        if m["seq_len"] != seq_len:
            raise ValueError(f"top-k cache seq_len={m['seq_len']} but the student trains on seq_len={seq_len}")
        if tokenizer_sha256 and m.get("tokenizer_sha256") and m["tokenizer_sha256"] != tokenizer_sha256:
            raise ValueError(
                f"tokenizer mismatch: cache tokenizer.json sha256 {m['tokenizer_sha256'][:12]}... "
                f"!= student's {tokenizer_sha256[:12]}..."
            )
        if windows_sha256 and m.get("windows_sha256") != windows_sha256:
            raise ValueError(f"top-k cache {self.dir} was computed on other token windows than the student's")

    def lookup(self, window_ids: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(values [B, T, k] float32, indices [B, T, k] int64) for the given training-window ids."""
        per = self.meta["shard_windows"]
        vals, idxs = [], []
        for w in window_ids:
            w = int(w)
            if not 0 <= w < self.meta["n_windows"]:
                raise IndexError(f"window {w} not in the cache (it holds {self.meta['n_windows']})")
            v, i = self._shard(w // per)
            vals.append(v[w % per])
            idxs.append(i[w % per])
        return torch.stack(vals).float(), torch.stack(idxs).long()

    @classmethod
    def build(
        cls,
        dir: str | os.PathLike,
        teacher: torch.nn.Module,
        windows,  # PackedSequences: the student's training windows
        *,
        k: int,
        batch_size: int = 16,
        shard_windows: int = 256,
        values_dtype: str = "float32",
        tokenizer_sha256: str | None = None,
        teacher_name: str = "",
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype | None = None,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> TopKCache:
        """Run the teacher once over every window and store its top-k logits; resumable per shard."""
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
        if values_dtype not in dtypes:
            raise ValueError(f"values_dtype={values_dtype!r}; expected one of {list(dtypes)}")
        vocab = _vocab_size(teacher)
        if not 1 <= k <= vocab:
            raise ValueError(f"k must be in [1, vocab_size={vocab}], got {k}")
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        n = len(windows)
        meta = {
            "format": CACHE_FORMAT,
            "k": k,
            "vocab_size": vocab,
            "seq_len": windows.seq_len,
            "n_windows": n,
            "shard_windows": shard_windows,
            "values_dtype": values_dtype,
            "indices_dtype": "int16" if vocab <= 2**15 else "int32",
            "tokenizer_sha256": tokenizer_sha256,
            "windows_sha256": windows_sha256(windows.tokens, windows.seq_len),
            "teacher": teacher_name,
        }
        meta_path = dir / "meta.json"
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            if {k_: old.get(k_) for k_ in meta} != meta:  # another teacher/data/k: start over
                for p in dir.glob("shard-*.safetensors"):
                    p.unlink()
            elif old.get("complete"):
                return cls(dir)
        atomic_write_text(meta_path, json.dumps({**meta, "complete": False}, indent=2, sort_keys=True))

        from safetensors.torch import save_file

        idx_dtype = torch.int16 if meta["indices_dtype"] == "int16" else torch.int32
        n_shards = -(-n // shard_windows)
        shards = range(n_shards)
        teacher.eval()
        for s in progress(shards) if progress else shards:
            path = dir / f"shard-{s:05d}.safetensors"
            if path.is_file():
                continue
            ids = np.arange(s * shard_windows, min(n, (s + 1) * shard_windows))
            vals, idxs = [], []
            for j in range(0, len(ids), batch_size):
                x, _ = windows.batch(ids[j : j + batch_size])  # [b, T]
                with (
                    torch.inference_mode(),
                    torch.autocast(
                        device_type=torch.device(device).type,
                        dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None,
                    ),
                ):
                    z = teacher(x.to(device)).logits.float()  # [b, T, V]
                top = z.topk(k, dim=-1)  # sorted, largest first
                vals.append(top.values.to(dtypes[values_dtype]).cpu())
                idxs.append(top.indices.to(idx_dtype).cpu())
            tensors = {"values": torch.cat(vals).contiguous(), "indices": torch.cat(idxs).contiguous()}
            atomic_write_bytes(path, lambda tmp, t=tensors: save_file(t, tmp, metadata={"format": "pt"}))
        atomic_write_text(meta_path, json.dumps({**meta, "complete": True}, indent=2, sort_keys=True))
        return cls(dir)


def _vocab_size(model: torch.nn.Module) -> int:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "vocab_size"):
        return int(cfg.vocab_size)
    raise ValueError(f"cannot tell the vocabulary size of {type(model).__name__} (no .config.vocab_size)")


# ---------------------------------------------------------------------------------------------
# Teachers: any Gemma 2 checkpoint, ours or Hugging Face's
# ---------------------------------------------------------------------------------------------


@dataclass
class Teacher:
    """A frozen teacher model and the tokenizer.json hash it was trained with (None if unknown)."""

    model: torch.nn.Module
    tokenizer_sha256: str | None
    source: str

    @property
    def vocab_size(self) -> int:
        return _vocab_size(self.model)


def load_teacher(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Teacher:
    """Load a Gemma 2 teacher for distillation (frozen, eval mode).

    ``path`` may be
      * an HF-layout folder (config.json + model.safetensors or sharded), e.g. google/gemma-2-2b or the
        ``model/`` folder ``foresight train-lm`` writes;
      * a ``foresight train-lm`` output folder (its ``model/`` subfolder is used);
      * a trainer checkpoint file (``checkpoints/last.safetensors``), whose state records the model config.
    The tokenizer hash is read from a tokenizer.json beside the weights (or in the parent folder).
    """
    from foresight.lm.text_data import tokenizer_sha256

    path = Path(path)
    if path.is_dir() and (path / "model" / "config.json").is_file():  # a train-lm run folder: its model/
        path = path / "model"
    if path.is_dir():
        from foresight.lm.hf_io import load_pretrained

        model = load_pretrained(path, dtype=dtype, device=device)
        tok_dirs = [path, path.parent]
    elif path.is_file() and path.suffix == ".safetensors":
        from foresight.core.checkpoint import load_checkpoint
        from foresight.lm.gemma2 import Gemma2, Gemma2Config

        full = load_checkpoint(path)
        state = full.get("state", full)
        if "model_config" not in state or "model" not in state:
            raise ValueError(f"{path} is not a foresight trainer checkpoint with a Gemma 2 model_config")
        cfg = state["model_config"]
        cfg = Gemma2Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
        model = Gemma2(cfg)
        model.load_state_dict(state["model"], strict=True)
        model = model.to(device=device, dtype=dtype or torch.float32)
        tok_dirs = [path.parent, path.parent.parent]
    else:
        raise ValueError(f"teacher {str(path)!r} is neither a checkpoint folder nor a .safetensors trainer checkpoint")
    model.eval().requires_grad_(False)
    sha = next((tokenizer_sha256(d / "tokenizer.json") for d in tok_dirs if (d / "tokenizer.json").is_file()), None)
    return Teacher(model=model, tokenizer_sha256=sha, source=str(path))


def check_teacher_student(
    teacher_vocab: int,
    student_vocab: int,
    teacher_tokenizer_sha256: str | None,
    student_tokenizer_sha256: str | None,
) -> None:
    """A teacher and student must share one tokenizer: same vocab size and same tokenizer.json (hash)."""
    if teacher_vocab != student_vocab:
        raise ValueError(
            f"tokenizer mismatch: teacher vocab_size={teacher_vocab} but student vocab_size={student_vocab}"
        )
    if teacher_tokenizer_sha256 is None or student_tokenizer_sha256 is None:
        raise ValueError(
            "tokenizer mismatch cannot be ruled out: no tokenizer.json found beside the "
            f"{'teacher' if teacher_tokenizer_sha256 is None else 'student'}; copy the tokenizer.json "
            "it was trained with next to its weights"
        )
    if teacher_tokenizer_sha256 != student_tokenizer_sha256:
        raise ValueError(
            f"tokenizer mismatch: teacher tokenizer.json sha256 {teacher_tokenizer_sha256[:12]}... "
            f"!= student tokenizer.json sha256 {student_tokenizer_sha256[:12]}..."
        )


# ---------------------------------------------------------------------------------------------
# Objectives for foresight.lm.train.Trainer
# ---------------------------------------------------------------------------------------------


class DistillationObjective:
    """Trainer objective: distil from an online teacher or a :class:`TopKCache` (exactly one).

    Called as ``objective(model, input_ids, targets, window_ids) -> LMLoss``; ``window_ids`` are the
    training-window ids of the batch rows, which is how cached logits are found.
    """

    def __init__(
        self,
        *,
        teacher: torch.nn.Module | None = None,
        cache: TopKCache | None = None,
        temperature: float = 1.0,
        alpha: float = 1.0,
    ):
        if (teacher is None) == (cache is None):
            raise ValueError("DistillationObjective needs exactly one of teacher= and cache=")
        _check_temperature(temperature)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.teacher, self.cache, self.temperature, self.alpha = teacher, cache, temperature, alpha
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def __repr__(self) -> str:
        src = "online teacher" if self.teacher is not None else repr(self.cache)
        return f"DistillationObjective({src}, temperature={self.temperature}, alpha={self.alpha})"

    def __call__(self, model, input_ids, targets, window_ids) -> LMLoss:
        logits = model(input_ids).logits  # [B, T, V]
        if self.teacher is not None:
            with torch.no_grad():
                t_logits = self.teacher(input_ids).logits  # [B, T, V]
            return distillation_loss(
                logits, targets, teacher_logits=t_logits, temperature=self.temperature, alpha=self.alpha
            )
        values, ids = self.cache.lookup(window_ids)  # [B, T, k] each
        return distillation_loss(
            logits,
            targets,
            teacher_topk=(values.to(logits.device), ids.to(logits.device)),
            temperature=self.temperature,
            alpha=self.alpha,
        )
