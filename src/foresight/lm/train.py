"""A resumable, optionally distributed trainer for causal language models (Gemma 2 and anything alike).

The model contract: ``model(input_ids [B, T]).logits -> [B, T, V]`` (``foresight.lm.gemma2.Gemma2``).
The objective contract: ``objective(model, input_ids, targets, window_ids) -> LMLoss`` (next-token
prediction here; distillation in :mod:`foresight.lm.distill`).

One optimizer step::

    ids  = order.take(position, batch_size)            # global batch of window ids, deterministic
    for micro-batch m of this rank:                    # [accum, world, micro] split of ids
        loss_m = objective(model, x_m, y_m, ids_m)     # under bf16 autocast if enabled
        (loss_m / accum).backward()                    # grads sync on the last micro-batch only
    clip_grad_norm_(grad_clip); AdamW.step(); LambdaLR.step()   # linear warmup, cosine to min_lr
    position += batch_size

The loss of a step is the mean over its ``batch_size`` sequences, whatever the split into ranks and
micro-batches, so one process with the same global batch gives the same losses (up to float order).

Resumption is exact: a checkpoint holds the model, the optimizer (AdamW moments and step counts), the
scheduler, the data position, the history and (through the :class:`~foresight.core.run.Run`) the RNG
states and the length of metrics.jsonl. The data order depends only on ``(seed, position)``, so nothing iterator-like is saved.

Distributed (launched with ``torchrun``): ``distributed="ddp"`` wraps the model in
``DistributedDataParallel``; ``"fsdp"`` applies FSDP2 ``fully_shard`` to every block of
``model.layers`` and then to the root. Backend: gloo on CPU, NCCL on CUDA. Checkpoints are full
(unsharded) state dicts gathered with ``torch.distributed.checkpoint.state_dict``, written by rank 0,
so a run can resume with another world size or without distribution at all.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from foresight.core.config import Config
from foresight.core.run import Run
from foresight.lm.cpu_decode import cpu_has_native_bf16
from foresight.lm.distill import LMLoss, next_token_loss
from foresight.lm.text_data import PackedSequences, ShuffledOrder

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig(Config):
    """Optimisation and bookkeeping hyperparameters of one training run (the data and model are separate)."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # sequences per optimizer step, summed over ranks and accumulation
    micro_batch_size: int = 0  # sequences per forward on one rank; 0 = batch_size / world (no accumulation)
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    warmup_steps: int = 100  # linear warmup from lr / warmup_steps
    weight_decay: float = 0.1  # AdamW decay on matrices (dim >= 2); norms are not decayed
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    eval_every: int = 100  # steps between validation passes (0: only at the end)
    eval_batches: int = 8  # validation batches of batch_size windows (0: the whole validation split)
    checkpoint_every: int = 100  # steps between checkpoints (0: only at the end)
    log_every: int = 10  # steps between metrics.jsonl lines
    seed: int = 0  # data order (and nothing else: the caller seeds model init)
    shuffle: bool = True
    # "auto": bf16 autocast on CUDA with bf16 and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32
    precision: str = "auto"
    compile: bool = False  # torch.compile the model (pays on GPU; on CPU only for larger models)
    distributed: str = "auto"  # "auto": ddp under torchrun (WORLD_SIZE > 1), else none; "none"; "ddp"; "fsdp"
    fused_adamw: bool = True  # fused AdamW kernel where available (CPU and CUDA), else foreach

    choices: ClassVar[dict[str, tuple]] = {
        "precision": ("auto", "bf16", "fp32"),
        "distributed": ("auto", "none", "ddp", "fsdp"),
    }

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("micro_batch_size", "warmup_steps", "eval_every", "eval_batches", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"weight_decay and grad_clip must be >= 0, got {self.weight_decay}, {self.grad_clip}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got ({self.beta1}, {self.beta2})")


# Fields that define the optimisation trajectory: a resumed run must keep them. Bookkeeping fields,
# precision, compile and distribution may change, and so may ``steps`` (extending a run: see Trainer.fit).
_RESUME_FIXED = (
    "batch_size",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "grad_clip",
    "seed",
    "shuffle",
)


# What a resumed training may change: everything else in TrainConfig pins the trajectory.
RESUME_MAY_CHANGE = tuple(f.name for f in fields(TrainConfig) if f.name not in _RESUME_FIXED)


class WarmupCosine:
    """LambdaLR factor: linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``.

    A class (not a closure) so ``LambdaLR.state_dict()`` records its fields.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - 1 - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Distributed helpers (torch.distributed only; no home-made collectives)
# ---------------------------------------------------------------------------------------------


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def init_distributed(device: torch.device | None = None) -> tuple[int, int, torch.device]:
    """Join the torchrun process group if launched by torchrun; return (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
        if use_cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return _rank(), _world(), device


def _is_bf16_device(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a TrainConfig.precision means on ``device`` (None: no autocast, fp32)."""
    if precision == "bf16" or (precision == "auto" and _is_bf16_device(torch.device(device))):
        return torch.bfloat16
    return None


# ---------------------------------------------------------------------------------------------
# Objective and results
# ---------------------------------------------------------------------------------------------


class NextTokenObjective:
    """Next-token prediction: mean cross-entropy of ``model(input_ids).logits`` against ``targets``.

    The logits are computed once, already shifted targets need no copies, and nothing is upcast
    (Gemma2 returns fp32 logits). ``compile=True`` fuses log-softmax and the target gather into one
    pass over the [B, T, V] logits with torch.compile.
    """

    def __init__(self, compile: bool = False):
        self.compiled = compile
        self._loss = torch.compile(next_token_loss, dynamic=False) if compile else next_token_loss

    def __call__(self, model, input_ids, targets, window_ids) -> LMLoss:
        logits = model(input_ids).logits  # [B, T, V]
        ce = self._loss(logits, targets)
        return LMLoss(loss=ce, ce=ce.detach())

    def __repr__(self) -> str:
        return f"NextTokenObjective(compile={self.compiled})"


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    steps: int
    tokens: int  # training tokens consumed (targets), all ranks
    final_loss: float  # training loss of the last step
    val_loss: float | None  # mean validation NLL (nats/token) after the last step
    history: list[dict] = field(default_factory=list)  # one dict per validation pass: step, tokens, val_loss, val_ppl
    train_seconds: float = 0.0  # wall time of this process's training steps (excludes eval and resume)
    tokens_per_second: float = 0.0


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------


class Trainer:
    """Trains ``model`` on packed windows with AdamW + warmup/cosine; see the module docstring.

    Args:
        model: an nn.Module with ``forward(input_ids).logits`` [B, T, V], already on ``device``.
        config: :class:`TrainConfig`.
        train, val: :class:`~foresight.lm.text_data.PackedSequences` (val may be None).
        objective: callable ``(model, input_ids, targets, window_ids) -> LMLoss``; default next-token.
            The scalars in ``LMLoss.extra`` are averaged over the step and logged under their names.
        run: the :class:`~foresight.core.run.Run` whose checkpoint ``checkpoint`` and metrics log this
            training uses (resuming from it when the run is resumed); None: no checkpoints, metrics lines
            kept in ``trainer.logged`` (tests, benchmarks).
        checkpoint: the checkpoint's name in ``run`` (several trainings can share one Run).
        extra_state: JSON-able values saved in every checkpoint (e.g. the model config, for loading later).
        progress: wraps the step iterator (``Run.progress`` or tqdm); None: no bar.
        desc: the progress bar's label. tags: fields added to every metrics line.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train: PackedSequences,
        val: PackedSequences | None = None,
        *,
        objective: Callable[..., LMLoss] | None = None,
        run: Run | None = None,
        checkpoint: str = "last",
        device: torch.device | str | None = None,
        extra_state: dict | None = None,
        progress: Callable | None = None,
        desc: str = "train",
        tags: dict | None = None,
    ):
        self.cfg = config
        self.train_data, self.val_data = train, val
        self.objective = objective or NextTokenObjective(compile=config.compile)
        self.run, self.checkpoint = run, checkpoint
        self.logged: list[dict] = []  # metrics lines, when there is no run
        self.extra_state = extra_state or {}
        self.progress, self.desc = progress, desc
        self.tags = tags or {}  # added to every metrics line, e.g. {"phase": "teacher"}
        device = torch.device(device) if device is not None else next(model.parameters()).device

        mode = config.distributed
        if mode == "auto":
            mode = "ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
        if mode != "none":
            _, _, device = init_distributed(device)
        self.mode, self.rank, self.world, self.device = mode, _rank(), _world(), device
        if mode != "none" and self.world == 1:
            raise ValueError(f"distributed={mode!r} needs a torchrun launch with WORLD_SIZE > 1")

        micro = config.micro_batch_size or config.batch_size // self.world
        if micro < 1 or config.batch_size % (micro * self.world):
            need = f"micro_batch_size*world = {micro}*{self.world}"
            raise ValueError(f"batch_size={config.batch_size} must be a multiple of {need}")
        self.micro, self.accum = micro, config.batch_size // (micro * self.world)

        self.autocast_dtype = autocast_dtype(config.precision, device)

        self.module = model.to(device)  # the bare model (state dicts, saving)
        self.model = self._wrap(self.module)  # what forward/backward runs through
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(config.warmup_steps, config.steps, config.min_lr_ratio)
        )
        self.order = ShuffledOrder(len(train), config.seed, config.shuffle)
        self.step, self.position, self.history = 0, 0, []
        self.last_loss = float("nan")

    # -- setup ----------------------------------------------------------------------------------
    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        elif self.mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            blocks = getattr(model, "layers", None)
            if isinstance(blocks, nn.ModuleList):
                for block in blocks:  # one all-gather per block, so only one block is unsharded at a time
                    fully_shard(block)
            fully_shard(model)
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    def _make_optimizer(self) -> torch.optim.Optimizer:
        # Matrices (projections, embedding) decay; vectors (RMSNorm scales, biases) do not (nanoGPT).
        params = [p for p in self.module.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        kw = dict(lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2), eps=self.cfg.eps)
        if self.cfg.fused_adamw:
            try:
                return torch.optim.AdamW(groups, fused=True, **kw)
            except (RuntimeError, TypeError):
                pass  # a dtype/device without a fused kernel: fall back to the multi-tensor path
        return torch.optim.AdamW(groups, foreach=True, **kw)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Full (unsharded) training state. Collective under DDP/FSDP: call it on every rank."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=self.mode != "none")
        model_sd = get_model_state_dict(self._inner(), options=opts)
        optim_sd = get_optimizer_state_dict(self._inner(), self.optimizer, options=opts)
        return {
            "model": model_sd,
            "optimizer": optim_sd,
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "position": self.position,
            "history": self.history,
            "last_loss": self.last_loss,
            "train_config": self.cfg.to_dict(),
            "done": self.step >= self.cfg.steps,
            **self.extra_state,
        }

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        saved = state.get("train_config", {})
        changed = [k for k in _RESUME_FIXED if k in saved and saved[k] != getattr(self.cfg, k)]
        if changed:
            diffs = ", ".join(f"{k}: {saved[k]!r} -> {getattr(self.cfg, k)!r}" for k in changed)
            raise ValueError(
                f"cannot resume exactly with a different {', '.join(changed)} ({diffs}); "
                "start a new run (e.g. --init from its model/) instead"
            )
        if int(state["step"]) > self.cfg.steps:
            raise ValueError(
                f"the checkpoint is at step {int(state['step'])}, past steps={self.cfg.steps}; give at least "
                f"{int(state['step'])} steps (more extends the run)"
            )
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self._inner(), state["model"], options=opts)
        set_optimizer_state_dict(self._inner(), self.optimizer, state["optimizer"], options=opts)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.position = int(state["step"]), int(state["position"])
        self.history, self.last_loss = list(state["history"]), float(state["last_loss"])

    def _inner(self) -> nn.Module:
        """The model the state-dict helpers understand (DDP/FSDP-wrapped, but not compiled)."""
        m = self.model
        return getattr(m, "_orig_mod", m)

    def _log(self, **metrics: Any) -> None:
        if self.run is None:
            self.logged.append(metrics)
        else:
            self.run.log(**metrics)

    def save(self) -> None:
        if self.run is None:
            return
        state = self.state_dict()
        if self.rank == 0:
            self.run.save_checkpoint(self.checkpoint, state, done=self.step >= self.cfg.steps)
        if self.world > 1:
            dist.barrier()

    # -- steps ----------------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _no_sync(self, last: bool):
        """Skip the gradient all-reduce/reduce-scatter on all but the last micro-batch."""
        if last or self.world == 1:
            if self.mode == "fsdp":
                self._inner().set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.mode == "ddp":
            return self._inner().no_sync()
        self._inner().set_requires_gradient_sync(False)
        return contextlib.nullcontext()

    def _global_ids(self) -> torch.Tensor:  # [accum, world, micro] window ids of this step
        ids = self.order.take(self.position, self.cfg.batch_size)
        return torch.from_numpy(ids).view(self.accum, self.world, self.micro)

    def train_step(self) -> dict:
        """One optimizer step on the next global batch; returns its metrics."""
        self.model.train()
        ids = self._global_ids()[:, self.rank]  # [accum, micro]
        loss_sum = torch.zeros((), device=self.device)
        kd_sum = torch.zeros((), device=self.device)
        ce_sum = torch.zeros((), device=self.device)
        extra_sum: dict[str, torch.Tensor] = {}
        for m in range(self.accum):
            x, y = self.train_data.batch(ids[m].numpy())  # [micro, T] each
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._no_sync(last=m == self.accum - 1):  # DDP reads the flag in forward: wrap both
                with self._autocast():
                    out = self.objective(self.model, x, y, ids[m].numpy())
                (out.loss / self.accum).backward()
            loss_sum += out.loss.detach()
            ce_sum += out.ce
            if out.kd is not None:
                kd_sum += out.kd
            for key, value in out.extra.items():
                value = torch.as_tensor(value, dtype=torch.float32, device=self.device).detach()
                extra_sum[key] = extra_sum[key] + value if key in extra_sum else value
        grad_norm = self._clip()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        self.position += self.cfg.batch_size
        # One tensor for every scalar, so multi-rank runs average them in a single all-reduce.
        stats = torch.stack([loss_sum, ce_sum, kd_sum, *extra_sum.values()]) / self.accum
        if self.world > 1:  # the mean over ranks = the mean over the global batch (equal sizes)
            dist.all_reduce(stats, op=dist.ReduceOp.AVG if self.device.type == "cuda" else dist.ReduceOp.SUM)
            if self.device.type != "cuda":  # gloo has no AVG
                stats /= self.world
        loss, ce, kd, *extra = stats.tolist()
        self.last_loss = loss
        metrics = {
            "step": self.step,
            "loss": loss,
            "ce": ce,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": self.position * self.train_data.seq_len,
        }
        if out.kd is not None:
            metrics["kd"] = kd
        metrics.update(zip(extra_sum, extra, strict=True))
        return metrics

    def _clip(self) -> float:
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
            norm = norm.full_tensor()
        return float(norm)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean next-token NLL (nats/token) and perplexity on the validation windows, in order."""
        if self.val_data is None:
            return {}
        self.model.eval()
        n = len(self.val_data)
        if self.cfg.eval_batches:
            n = min(n, self.cfg.eval_batches * self.cfg.batch_size)
        n -= n % self.world  # every rank runs the same number of forwards (FSDP needs it)
        mine = torch.arange(self.rank, n, self.world)
        with self._autocast():
            total = nll_sum(self.model, self.val_data, mine, self.micro, self.device)
        if self.world > 1:
            dist.all_reduce(total)
        nll = (total[0] / total[1]).item()
        return {"val_loss": nll, "val_ppl": math.exp(min(nll, 50.0))}

    # -- loop -----------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Load the run's checkpoint if there is one; True if training continues from it."""
        state = None if self.run is None else self.run.load_checkpoint(self.checkpoint)
        if state is None:
            return False
        self.load_state_dict(state)
        return True

    def fit(self) -> TrainResult:
        """Train to ``config.steps`` (resuming from the run's checkpoint if any), then validate.

        A resumed run may be given more ``steps`` than it was started with: it continues from its last
        step with the schedule it was started with, whose cosine has reached ``lr * min_lr_ratio`` and
        stays there (continued training at the final learning rate). Exact: an extension killed and
        resumed ends like an uninterrupted extension.
        """
        cfg = self.cfg
        self.resume()
        start_step = self.step
        steps = range(start_step, cfg.steps)
        if self.progress is not None and self.rank == 0:
            steps = self.progress(steps, desc=self.desc, total=cfg.steps, initial=start_step)
        t_train = 0.0
        tokens0 = self.position
        for _ in steps:
            t = time.perf_counter()
            metrics = self.train_step()
            t_train += time.perf_counter() - t
            last = self.step == cfg.steps
            if self.step % cfg.log_every == 0 or last:
                metrics["tokens_per_s"] = (self.position - tokens0) * self.train_data.seq_len / max(t_train, 1e-9)
                if self.rank == 0:
                    self._log(**self.tags, **metrics)
            if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                ev = self.evaluate()
                if ev:
                    record = {"step": self.step, "tokens": metrics["tokens"], **ev}
                    self.history.append(record)
                    if self.rank == 0:
                        self._log(**self.tags, **record)
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last:
                self.save()
        val = self.history[-1]["val_loss"] if self.history else None
        tokens = (self.position - tokens0) * self.train_data.seq_len
        return TrainResult(
            steps=self.step,
            tokens=self.position * self.train_data.seq_len,
            final_loss=self.last_loss,
            val_loss=val,
            history=list(self.history),
            train_seconds=t_train,
            tokens_per_second=tokens / t_train if t_train > 0 else 0.0,
        )


@torch.no_grad()
def nll_sum(
    model: nn.Module, data: PackedSequences, ids: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """[sum of next-token NLL, tokens] (float64, on `device`) over windows `ids` of `data`, in batches."""
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for j in range(0, len(ids), batch_size):
        x, y = data.batch(ids[j : j + batch_size].numpy())
        x, y = x.to(device), y.to(device)
        logits = model(x).logits
        total[0] += next_token_loss(logits.float(), y).double() * y.numel()
        total[1] += y.numel()
    return total


def validation_nll(
    model: nn.Module,
    data: PackedSequences,
    windows: int = 0,
    batch_size: int = 8,
    precision: str = "fp32",
) -> float:
    """Mean next-token NLL (nats/token) of `model` on the first `windows` windows of `data` (0 = all),
    exactly what the trainer's validation computes; the model is left in eval mode."""
    if windows < 0 or batch_size < 1:
        raise ValueError(f"need windows >= 0 and batch_size >= 1, got {windows} and {batch_size}")
    device = next(model.parameters()).device
    n = min(len(data), windows) if windows else len(data)
    dtype = autocast_dtype(precision, device)
    ctx = contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)
    model.eval()
    with ctx:
        total = nll_sum(model, data, torch.arange(n), batch_size, device)
    return (total[0] / total[1]).item()


# ---------------------------------------------------------------------------------------------
# Several trainings (and measurements) in one Run, each resumable on its own
# ---------------------------------------------------------------------------------------------


def train_phase(
    run: Run,
    name: str,
    model: nn.Module,
    config: TrainConfig,
    train: PackedSequences,
    val: PackedSequences | None = None,
    objective: Callable[..., LMLoss] | None = None,
    model_config: Any = None,
) -> tuple[nn.Module, list[dict]]:
    """One training as a phase of ``run`` (see :meth:`foresight.core.run.Run.phase`): (the trained model,
    its validation history). A finished phase is read back from its checkpoint (no retraining, no logging);
    an interrupted one resumes from it. Metrics lines carry ``phase=name``; ``model_config`` (a dataclass,
    default ``model.config``) is saved in the checkpoint for loading later.
    """
    done = run.finished_phase(name)
    if done is not None:
        model.load_state_dict(done["model"])
        return model, done["history"]
    if not run.has_checkpoint(name):
        run.start_phase()
    model_config = model.config if model_config is None else model_config
    trainer = Trainer(
        model,
        config,
        train,
        val,
        objective=objective,
        run=run,
        checkpoint=name,
        device=run.device,
        progress=run.progress,
        desc=name,
        tags={"phase": name},
        extra_state={"model_config": asdict(model_config)},
    )
    result = trainer.fit()
    run.end_phase()
    return trainer.module, result.history
