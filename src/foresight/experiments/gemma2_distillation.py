"""Gemma 2: a student distilled from a larger teacher beats the same student trained on next tokens.

Gemma 2 trains its 2B and 9B models by knowledge distillation from a larger model "instead of next
token prediction" (docs/gemma2.md, "Distillation"). The claim checked here, at toy scale: with the same
student and the same number of training tokens, distillation reaches a lower validation NLL than
next-token prediction (NTP).

Protocol:
    1. Tokenise the corpus (byte-level BPE) and cut a contiguous validation split.
    2. Train a teacher: a larger tiny Gemma 2, by NTP, on ``teacher_tokens`` tokens.
    3. Cache the teacher's top-k logits on every training window once (safetensors shards).
    4. For each student token budget: train two students with the same init, data order and schedule,
       one by NTP and one by distillation (τ² · KL(teacher ‖ student) from the cache, α = 1).
    5. Validation NLL (nats/token, next-token cross-entropy) of every student along training.
Verdict (`verdict`): "reproduced" iff the distilled student's final NLL is below the NTP student's at every
budget, "partial" if at some, "not reproduced" if at none. Phases: teacher, then ntp-<budget> and kd-<budget>
for each budget (trainings, each checkpointed; ``--resume`` continues).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from foresight.core.config import Config, check_scale
from foresight.core.registry import Result, experiment
from foresight.core.report import plot_lines
from foresight.core.run import Run, seed_everything
from foresight.core.stats import wins_ties_losses


@dataclass(frozen=True)
class Gemma2DistillationConfig(Config):
    corpus: str = "auto"  # "auto" = tinyshakespeare if it resolves, else the built-in stdlib docstrings
    vocab_size: int = 1024  # byte-level BPE trained on the corpus
    seq_len: int = 128
    val_fraction: float = 0.1  # the last 10% of the token stream
    train_windows: int = 0  # use only the first N training windows (0 = all); shrinks tiny runs
    # teacher: the larger model (Gemma 2 block, soft-caps, GQA, alternating local/global layers)
    teacher_hidden: int = 128
    teacher_layers: int = 4
    teacher_heads: int = 4
    teacher_tokens: int = 2_000_000
    teacher_lr: float = 2e-3
    # student: the same architecture, smaller
    student_hidden: int = 64
    student_layers: int = 2
    student_heads: int = 2
    student_budgets: tuple[int, ...] = (131_072, 262_144, 524_288)  # training tokens per student
    student_lr: float = 5e-3
    head_dim: int = 32
    batch_size: int = 8  # sequences per step (8 learns more per token than 16 at these budgets)
    warmup_fraction: float = 0.05
    # distillation (Gemma 2: pure KD, α = 1, τ = 1)
    temperature: float = 1.0
    alpha: float = 1.0
    # 0: the teacher runs online (its full distribution); k > 0: its top-k logits are cached once and
    # renormalised. With this small a teacher (perplexity ~90) a top-32 cache misses ~37% of the next
    # tokens and renormalising pushes the student's mass off them (measured: KD lost to NTP at every budget).
    topk: int = 0
    eval_points: int = 6  # validation passes per student run (curve resolution); the teacher gets 2
    eval_batches: int = 16  # validation batches of batch_size windows per pass (0 = the whole split)
    precision: str = "auto"

    choices: ClassVar[dict[str, tuple]] = {"precision": ("auto", "bf16", "fp32")}

    @classmethod
    def preset(cls, scale: str) -> Gemma2DistillationConfig:
        check_scale(scale)
        if scale == "tiny":
            return cls(
                vocab_size=300,
                seq_len=32,
                train_windows=300,
                teacher_hidden=32,
                teacher_layers=2,
                teacher_heads=2,
                teacher_tokens=16_384,
                student_hidden=16,
                student_layers=1,
                student_heads=1,
                student_budgets=(4096, 8192),
                head_dim=8,
                batch_size=8,
                eval_points=2,
                eval_batches=2,
            )
        if scale == "quick":
            return cls(teacher_tokens=393_216, student_budgets=(32_768, 65_536, 131_072))
        return cls()

    def validate(self) -> None:
        for name in (
            "vocab_size",
            "seq_len",
            "teacher_hidden",
            "teacher_layers",
            "teacher_heads",
            "teacher_tokens",
            "student_hidden",
            "student_layers",
            "student_heads",
            "head_dim",
            "batch_size",
            "eval_points",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.topk < 0:
            raise ValueError(f"topk must be >= 0 (0 = online teacher), got {self.topk}")
        if not self.student_budgets or min(self.student_budgets) < self.batch_size * self.seq_len:
            raise ValueError(
                f"student_budgets={self.student_budgets} must be non-empty and each at least one "
                f"batch ({self.batch_size * self.seq_len} tokens)"
            )
        if self.topk > self.vocab_size:
            raise ValueError(f"topk={self.topk} exceeds vocab_size={self.vocab_size}")
        if not 0.0 <= self.alpha <= 1.0 or not self.temperature > 0:
            raise ValueError(
                f"need 0 <= alpha <= 1 and temperature > 0, got alpha={self.alpha}, temperature={self.temperature}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


def _model_config(cfg: Gemma2DistillationConfig, hidden: int, layers: int, heads: int):
    from foresight.lm.gemma2 import Gemma2Config

    kv = max(1, heads // 2)
    return Gemma2Config.tiny(
        vocab_size=cfg.vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=cfg.head_dim,
        query_pre_attn_scalar=float(cfg.head_dim),
        sliding_window=max(2, cfg.seq_len // 2),
        max_position_embeddings=cfg.seq_len,
    )


def train_config(cfg: Gemma2DistillationConfig, tokens: int, lr: float, seed: int, eval_points: int):
    from foresight.lm.train import TrainConfig

    steps = max(1, tokens // (cfg.batch_size * cfg.seq_len))
    return TrainConfig(
        steps=steps,
        batch_size=cfg.batch_size,
        lr=lr,
        warmup_steps=max(1, int(cfg.warmup_fraction * steps)),
        eval_every=max(1, steps // eval_points),
        eval_batches=cfg.eval_batches,
        checkpoint_every=max(1, steps // 4),
        log_every=max(1, steps // 50),
        seed=seed,
        precision=cfg.precision,
        distributed="none",
    )


def load_data(cfg: Gemma2DistillationConfig, run: Run):
    from foresight.lm.text_data import PackedSequences, pick_corpus, prepare_text_data

    corpus, note = pick_corpus(cfg.corpus, run.data_dir)
    data = prepare_text_data(
        corpus,
        run.dir / "data",
        vocab_size=cfg.vocab_size,
        seq_len=cfg.seq_len,
        val_fraction=cfg.val_fraction,
        data_dir=run.data_dir,
    )
    if cfg.train_windows and cfg.train_windows < len(data.train):
        data.train = PackedSequences(data.train.tokens[: cfg.train_windows * cfg.seq_len + 1], cfg.seq_len)
    return data, corpus, note


RULE = (
    "reproduced iff distilled-student val NLL < next-token-student val NLL at every token budget "
    "(partial: at some budgets; not reproduced: at none)"
)


def verdict(kd_nll: Sequence[float], ntp_nll: Sequence[float]) -> tuple[str, int]:
    """``(verdict, wins)`` by :data:`RULE` from the final validation NLLs per budget (the same budgets, in order);
    a win is a strictly lower distilled NLL (a tie is not a win)."""
    wins, _, _ = wins_ties_losses(ntp_nll, kd_nll)  # ntp - kd > 0: distillation is better
    return ("reproduced" if wins == len(kd_nll) else "partial" if wins else "not reproduced"), wins


@experiment(
    name="gemma2-distillation",
    system="Gemma 2",
    paper="Gemma Team, Gemma 2: Improving Open Language Models at a Practical Size, 2024",
    claim=(
        "A student trained by distillation from a larger teacher reaches lower validation NLL than the same "
        "student trained by next-token prediction on the same number of tokens"
    ),
    config=Gemma2DistillationConfig,
    threads=1,
)
def run(cfg: Gemma2DistillationConfig, run: Run) -> Result:
    from foresight.lm.distill import DistillationObjective, TopKCache, perplexity
    from foresight.lm.gemma2 import Gemma2
    from foresight.lm.train import autocast_dtype, train_phase

    data, corpus, note = load_data(cfg, run)
    order_seed = run.seed_for("data-order")  # every model sees the windows in the same order

    teacher_cfg = _model_config(cfg, cfg.teacher_hidden, cfg.teacher_layers, cfg.teacher_heads)
    seed_everything(run.seed_for("teacher-init"))
    teacher_tcfg = train_config(cfg, cfg.teacher_tokens, cfg.teacher_lr, order_seed, eval_points=2)
    teacher, teacher_hist = train_phase(run, "teacher", Gemma2(teacher_cfg), teacher_tcfg, data.train, data.val)
    teacher.eval().requires_grad_(False)
    if cfg.topk:  # sparse: run the teacher once over every training window, reuse for every student
        cache = TopKCache.build(
            run.dir / "teacher_topk",
            teacher,
            data.train,
            k=cfg.topk,
            batch_size=cfg.batch_size,
            tokenizer_sha256=data.tokenizer_sha256,
            teacher_name="teacher phase of this run",
            device=run.device,
            autocast_dtype=autocast_dtype(cfg.precision, run.device),
            progress=lambda it: run.progress(it, desc="teacher top-k cache"),
        )
        kd = DistillationObjective(cache=cache, temperature=cfg.temperature, alpha=cfg.alpha)
    else:  # dense: the teacher's full next-token distribution, computed alongside each student step
        kd = DistillationObjective(teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha)
    student_cfg = _model_config(cfg, cfg.student_hidden, cfg.student_layers, cfg.student_heads)

    curves: dict[str, dict[int, list]] = {"ntp": {}, "kd": {}}
    for budget in cfg.student_budgets:
        for method, objective in (("ntp", None), ("kd", kd)):
            seed_everything(run.seed_for("student-init"))  # both methods (and all budgets) start from one init
            # ... and see the same windows in the same order under the same schedule
            tcfg = train_config(cfg, budget, cfg.student_lr, order_seed, cfg.eval_points)
            student = Gemma2(student_cfg)
            _, hist = train_phase(run, f"{method}-{budget}", student, tcfg, data.train, data.val, objective)
            curves[method][budget] = hist

    final = {m: {b: curves[m][b][-1]["val_loss"] for b in cfg.student_budgets} for m in curves}
    budgets = cfg.student_budgets
    verdict_, wins = verdict([final["kd"][b] for b in budgets], [final["ntp"][b] for b in budgets])

    table = [
        {
            "student tokens": b,
            "NTP val NLL": final["ntp"][b],
            "KD val NLL": final["kd"][b],
            "KD - NTP": final["kd"][b] - final["ntp"][b],
            "NTP ppl": perplexity(final["ntp"][b]),
            "KD ppl": perplexity(final["kd"][b]),
        }
        for b in cfg.student_budgets
    ]
    teacher_nll = teacher_hist[-1]["val_loss"]
    table.append(
        {
            "student tokens": f"teacher ({cfg.teacher_tokens} tokens)",
            "NTP val NLL": teacher_nll,
            "KD val NLL": "",
            "KD - NTP": "",
            "NTP ppl": perplexity(teacher_nll),
            "KD ppl": "",
        }
    )

    largest = max(cfg.student_budgets)
    series = {}
    for b in cfg.student_budgets:
        for method, label in (("ntp", "next-token"), ("kd", "distilled")):
            hist = curves[method][b]
            series[f"{label}, {b // 1024}k tokens"] = (
                [h["tokens"] for h in hist],
                [h["val_loss"] for h in hist],
            )
    plot_lines(
        run.figure("val_nll_curves.png"),
        series,
        title="Student validation NLL while training",
        xlabel="training tokens",
        ylabel="validation NLL (nats/token)",
    )
    plot_lines(
        run.figure("val_nll_vs_budget.png"),
        {
            "next-token": (list(cfg.student_budgets), [final["ntp"][b] for b in cfg.student_budgets]),
            "distilled": (list(cfg.student_budgets), [final["kd"][b] for b in cfg.student_budgets]),
            "teacher": (list(cfg.student_budgets), [teacher_nll] * len(cfg.student_budgets)),
        },
        title="Final student validation NLL per token budget",
        xlabel="student training tokens",
        ylabel="validation NLL (nats/token)",
    )

    n_params = {
        name: sum(p.numel() for p in Gemma2(c).parameters())
        for name, c in (("teacher", teacher_cfg), ("student", student_cfg))
    }
    metrics = {
        "teacher_val_nll": teacher_nll,
        **{f"ntp_val_nll_{b}": final["ntp"][b] for b in cfg.student_budgets},
        **{f"kd_val_nll_{b}": final["kd"][b] for b in cfg.student_budgets},
        "kd_minus_ntp_at_largest_budget": final["kd"][largest] - final["ntp"][largest],
        "kd_wins": wins,
        "budgets": len(budgets),
        "teacher_params": n_params["teacher"],
        "student_params": n_params["student"],
        "corpus": corpus,
        "train_tokens_available": len(data.train) * cfg.seq_len,
        "val_tokens": len(data.val) * cfg.seq_len,
    }
    n_val = min(len(data.val), cfg.eval_batches * cfg.batch_size) if cfg.eval_batches else len(data.val)
    protocol = (
        f"Corpus {corpus} ({metrics['train_tokens_available']} training tokens in windows of {cfg.seq_len}, "
        f"byte-level BPE with {cfg.vocab_size} tokens, last {cfg.val_fraction:.0%} held out). Teacher: tiny "
        f"Gemma 2 with {n_params['teacher']} parameters (d={cfg.teacher_hidden}, "
        f"{cfg.teacher_layers} layers) "
        f"trained by next-token prediction on {cfg.teacher_tokens} tokens. Students: {n_params['student']} "
        f"parameters (d={cfg.student_hidden}, {cfg.student_layers} layers), same init, data order and "
        f"AdamW/warmup-cosine schedule for both methods; budgets {list(cfg.student_budgets)} tokens. "
        f"Distillation: τ²·KL(teacher ‖ student) with τ={cfg.temperature}, α={cfg.alpha} "
        f"(α=1: no next-token term, as Gemma 2); teacher "
        + (f"top-{cfg.topk} logits cached once and renormalised. " if cfg.topk else "run online (full softmax). ")
        + f"Validation NLL on {n_val} fixed held-out windows."
    )
    notes = note + (
        "Toy scale: the paper distils 2B/9B students from larger Gemma 2 models on trillions of tokens; "
        "here both models are tiny and the corpus is small, so the absolute NLLs say nothing about Gemma 2 "
        "itself. The teacher sees more tokens than any student (it is trained first, as in the paper). "
        "Students are validated on the same fixed held-out windows, so the KD - NTP differences are paired. "
        "Observed while choosing the budgets (quick scale, seed 0): with a 262k-token budget the NTP student "
        "nearly reached the teacher (4.49 vs 4.39 nats) and the distillation gain shrank to 0.03 nats, so "
        "distillation helps most while the student is far from its teacher. With a sparse teacher "
        "(--set topk=32) this toy teacher's top-32 misses 38% of the next training tokens and renormalising "
        "pushes the student's mass off them: that variant lost to NTP at every budget, which is why the "
        "default runs the teacher online."
    )
    return Result(
        verdict=verdict_,
        rule=RULE,
        metrics=metrics,
        table=table,
        figures=["val_nll_curves.png", "val_nll_vs_budget.png"],
        protocol=protocol,
        notes=notes,
    )
