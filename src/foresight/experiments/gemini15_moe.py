"""Gemini 1.5: a sparse MoE language model beats its compute-matched dense twin and finds needles in haystacks.

Gemini 1.5 Pro is "a sparse mixture-of-expert (MoE) Transformer-based model" that needs "significantly
less training compute" than Gemini 1.0 Ultra, with "near-perfect retrieval (>99%)" of a needle in a
haystack up to millions of tokens (docs/gemini15_moe.md). The report
does not disclose its MoE recipe, so the Switch Transformer's comparison stands in for the compute claim.
Claims checked at toy scale, char-level on tinyshakespeare:

    (a) a sparse MoE LM (E experts of width F / k in every block, k routed per token) reaches a lower
        validation NLL than the dense model with the same active parameters per token (the same Gemma 2
        decoder with one FFN of width F), trained on the same tokens in the same order;
    (b) the MoE LM retrieves the needle (exact match of the greedy answer) in >= 99% of the probes of
        every (context length, depth) cell up to its trained context length. Lengths of 2x and 4x the
        trained context are reported as extrapolation and are not part of the rule: nothing in the
        training (RoPE positions, attention spans) covers them, and Gemini's long-context ability came
        from training on long contexts.

Protocol:
    1. Char vocabulary of the corpus (+ lowercase letters); the last ``val_fraction`` is held out.
    2. Training windows of ``seq_len + 1`` characters, each with one needle probe of random length and
       depth (`foresight.lm.niah.NeedleTrainingData`); the loss is `foresight.lm.niah.NeedleObjective`:
       next-character CE on every character + ``answer_weight`` x the CE on the answer characters
       (+ the weighted load-balancing and z-losses for the MoE).
    3. Dense twin and MoE model: the same init of every shared weight (all but the FFNs,
       `foresight.lm.moe_lm.copy_shared_weights`), the same loss, data order, optimiser and schedule.
    4. Validation NLL on plain held-out text windows along training; NIAH grid (lengths x depths x
       ``niah_needles`` probes, haystacks from held-out text) for both models after training; expert
       load on held-out text (`foresight.lm.moe_lm.expert_load_stats`).
Verdict (`verdict`): "reproduced" iff (a) and (b) hold, "partial" iff one does, "not reproduced" iff neither.
Phases: dense, moe (trainings), niah (a sweep over the two models), expert-load; ``--resume`` continues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from foresight.core.config import Config, check_scale
from foresight.core.registry import Result, experiment
from foresight.core.report import plot_bars, plot_lines
from foresight.core.run import Run
from foresight.lm.niah import DEFAULT_DEPTHS, NIAHResult, probe_overhead

# config fields that must be >= 1
_POSITIVE = (
    "seq_len word_len hidden layers heads head_dim intermediate sliding_window num_experts top_k steps batch_size "
    "eval_points niah_needles"
).split()


@dataclass(frozen=True)
class Gemini15MoEConfig(Config):
    corpus: str = "auto"  # "auto" = tinyshakespeare if it resolves, else the built-in stdlib docstrings
    val_fraction: float = 0.1  # the last 10% of the characters
    seq_len: int = 256  # trained context (characters)
    min_context: int = 0  # shortest training probe; 0 = needle + question + answer + 8 characters
    word_len: int = 5  # letters of the secret word
    # model: Gemma 2 blocks (alternating local/global attention, soft-caps, GQA)
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    head_dim: int = 32
    intermediate: int = 512  # F of the dense FFN; each expert has F / top_k (same FFN FLOPs per token)
    sliding_window: int = 128
    # MoE: E experts of width F / k, top-k with Mixtral's renormalised gate (why not top-1: `_moe_config`);
    # Switch's alpha = 1e-2 load balancing, ST-MoE z-loss 1e-3
    num_experts: int = 8
    top_k: int = 2
    gating: str = "topk_softmax"
    capacity_factor: float = 0.0  # 0: dropless (one machine; no train/eval mismatch)
    router_jitter: float = 0.0
    aux_loss_coef: float = 1e-2
    z_loss_coef: float = 1e-3
    # optimisation (identical for both models)
    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_fraction: float = 0.05
    # loss = CE(all characters) + answer_weight * CE(answer characters); 1 = retrieval weighs as much as
    # the language model (`foresight.lm.niah.answer_weighted_loss`); 0 = plain next-character training
    answer_weight: float = 1.0
    eval_points: int = 8  # validation passes per training run
    eval_batches: int = 8  # validation batches of batch_size windows per pass
    # NIAH grid; () = seq_len x (1/4, 1/2, 1, 2, 4), keeping lengths that fit a probe
    niah_lengths: tuple[int, ...] = ()
    niah_depths: tuple[float, ...] = DEFAULT_DEPTHS
    niah_needles: int = 10  # probes per cell
    precision: str = "auto"

    choices: ClassVar[dict[str, tuple]] = {
        "precision": ("auto", "bf16", "fp32"),
        "gating": ("softmax", "topk_softmax"),
    }

    @classmethod
    def preset(cls, scale: str) -> Gemini15MoEConfig:
        check_scale(scale)
        if scale == "tiny":
            return cls(
                seq_len=96, hidden=32, layers=2, heads=2, head_dim=16, intermediate=64, sliding_window=32,
                num_experts=4, steps=6, batch_size=4, eval_points=2, eval_batches=1, niah_depths=(0.0, 50.0, 100.0),
                niah_needles=2,
            )  # fmt: skip
        if scale == "quick":
            # sized for <= 6 minutes on one CPU thread (two trainings of ~2 minutes, then the grids)
            return cls(
                seq_len=128, hidden=64, layers=4, heads=4, head_dim=16, intermediate=256, sliding_window=64,
                steps=900, batch_size=16, niah_lengths=(96, 128, 256, 512),
            )  # fmt: skip
        return cls()

    def validate(self) -> None:
        for name in _POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_experts < 2:
            raise ValueError(f"num_experts must be >= 2 for a sparse model, got {self.num_experts}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.heads % 2 and self.heads != 1:
            raise ValueError(f"heads must be 1 or even (GQA with heads / 2 kv heads), got {self.heads}")
        low = probe_overhead(self.word_len)
        if self.min_context and not low <= self.min_context <= self.seq_len + 1:
            raise ValueError(f"min_context={self.min_context} must be 0 or in [{low}, seq_len + 1]")
        if self.seq_len + 1 < low + 8:
            raise ValueError(f"seq_len={self.seq_len} leaves no haystack: a probe needs {low} characters + 8")
        for L in self.niah_lengths:
            if L < low:
                raise ValueError(f"niah_lengths entry {L} is shorter than a probe's {low} fixed characters")
        if any(not 0.0 <= d <= 100.0 for d in self.niah_depths) or not self.niah_depths:
            raise ValueError(f"niah_depths must be a non-empty tuple of percents in [0, 100], got {self.niah_depths}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.intermediate % self.top_k:
            raise ValueError(
                f"intermediate={self.intermediate} must be a multiple of top_k={self.top_k} "
                "(each expert has intermediate / top_k)"
            )
        if not self.answer_weight >= 0:
            raise ValueError(f"answer_weight must be >= 0, got {self.answer_weight}")
        if not self.lr > 0 or not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"need lr > 0 and warmup_fraction in [0, 1), got {self.lr}, {self.warmup_fraction}")

    # --- derived --------------------------------------------------------------------------------

    def grid_lengths(self) -> tuple[int, ...]:
        if self.niah_lengths:
            return tuple(sorted(self.niah_lengths))
        low = probe_overhead(self.word_len)
        lengths = {int(self.seq_len * f) for f in (0.25, 0.5, 1, 2, 4)}
        return tuple(sorted(L for L in lengths if L >= low + 8))

    def shortest_probe(self) -> int:
        return self.min_context or probe_overhead(self.word_len) + 8


# ---------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------


def _dense_config(cfg: Gemini15MoEConfig, vocab_size: int):
    """The dense twin: a Gemma 2 decoder with one FFN of width ``intermediate``."""
    from foresight.lm.gemma2 import Gemma2Config

    return Gemma2Config.tiny(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_layers=cfg.layers,
        num_heads=cfg.heads,
        num_kv_heads=max(1, cfg.heads // 2),
        head_dim=cfg.head_dim,
        query_pre_attn_scalar=float(cfg.head_dim),
        sliding_window=cfg.sliding_window,
        max_position_embeddings=max((cfg.seq_len, *cfg.grid_lengths())),  # room for the extrapolation probes
        pad_token_id=None,
        bos_token_id=None,
        eos_token_ids=(),
    )


def _moe_config(cfg: Gemini15MoEConfig, vocab_size: int):
    """The dense twin with E experts of width F / k in every block, k per token (the dense FFN's FLOPs and
    active parameters, plus the routers). Not top-1 Switch: Gemma 2's post-FFN RMSNorm cancels a single gate
    value, so a top-1 router gets (almost) no gradient from the LM loss (`foresight.lm.moe_lm`; notes)."""
    from foresight.lm.moe_lm import MoELMConfig
    from foresight.nn.moe import MoEConfig

    moe = MoEConfig(
        num_experts=cfg.num_experts,
        top_k=cfg.top_k,
        gating=cfg.gating,
        capacity_factor=cfg.capacity_factor,
        router_jitter=cfg.router_jitter,
        aux_loss_coef=cfg.aux_loss_coef,
        z_loss_coef=cfg.z_loss_coef,
    )
    return MoELMConfig.compute_matched(_dense_config(cfg, vocab_size), moe)


def _train_config(cfg: Gemini15MoEConfig, seed: int):
    from foresight.lm.train import TrainConfig

    return TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=max(1, int(cfg.warmup_fraction * cfg.steps)),
        eval_every=max(1, cfg.steps // cfg.eval_points),
        eval_batches=cfg.eval_batches,
        checkpoint_every=max(1, cfg.steps // 4),
        log_every=1,  # every step: the router diagnostics are per step
        seed=seed,
        precision=cfg.precision,
        distributed="none",
    )


@dataclass
class _Data:
    vocab: object  # CharVocab
    val_text: str  # held-out haystacks
    train: object  # NeedleTrainingData
    val: object  # PackedSequences of plain held-out text
    corpus: str
    note: str


def _load_data(cfg: Gemini15MoEConfig, run: Run) -> _Data:
    from foresight.lm.niah import CharVocab, NeedleTrainingData
    from foresight.lm.text_data import PackedSequences, load_corpus, pick_corpus

    corpus, note = pick_corpus(cfg.corpus, run.data_dir)
    text = "\n".join(load_corpus(corpus, run.data_dir))
    vocab = CharVocab.for_corpus(text)
    cut = int(round(len(text) * (1.0 - cfg.val_fraction)))
    train_text, val_text = text[:cut], text[cut:]
    need = 2 * max(cfg.grid_lengths())
    if len(val_text) < need:
        raise ValueError(f"{len(val_text)} held-out characters are too few for NIAH probes of {need // 2}")
    train = NeedleTrainingData(
        train_text,
        vocab,
        cfg.seq_len,
        min_context=cfg.shortest_probe(),
        word_len=cfg.word_len,
        seed=run.seed_for("needle-windows"),
    )
    val = PackedSequences(vocab.encode(val_text), cfg.seq_len)
    return _Data(vocab, val_text, train, val, corpus, note)


# ---------------------------------------------------------------------------------------------
# Verdict
# ---------------------------------------------------------------------------------------------

RECALL_BAR = 0.99  # "near-perfect retrieval (>99%)"
RULE = (
    f"(a) MoE final val NLL < dense-twin final val NLL; (b) MoE NIAH recall >= {RECALL_BAR} in every (length, "
    "depth) cell with length <= the trained context. reproduced: (a) and (b); partial: one of them; "
    "not reproduced: neither"
)


def verdict(moe_nll: float, dense_nll: float, moe_recall_in_range: Sequence[float]) -> tuple[str, bool, bool]:
    """``(verdict, claim_a, claim_b)`` by :data:`RULE` from the final validation NLLs and the MoE's NIAH recall
    in every cell up to the trained context (no cells: (b) fails)."""
    claim_a = bool(moe_nll < dense_nll)
    claim_b = len(moe_recall_in_range) > 0 and min(moe_recall_in_range) >= RECALL_BAR
    v = "reproduced" if claim_a and claim_b else "partial" if claim_a or claim_b else "not reproduced"
    return v, claim_a, claim_b


# Every variant run at quick scale while the design was chosen (seed 0 unless said; 900 steps x 2048
# characters; verdict rule unchanged). Kept in the notes so a reader sees the whole search.
_DESIGN_SEARCH = (
    "Design search (quick scale, seed 0, 900 steps x 2048 characters, every variant run is listed). "
    "V0, the first design: 8 Switch experts (top-1, un-renormalised gate) of the dense width F=256, loss = CE "
    "on every character: MoE val NLL 2.191 vs dense 2.056; NIAH recall 0 for both (answer letters at chance). "
    "Two faults were found before changing anything. (1) The router had almost no gradient path: a Gemma 2 "
    "block RMS-normalises the FFN output (post_mlp_norm) before the residual, so with ONE expert per token "
    "the gate value cancels (RMSNorm(p*y) = RMSNorm(y)) once y exceeds the norm's eps; measured on the quick "
    "model with trained-size expert outputs, the router's gradient from the CE was ~1e-4 against ~3e-2 with "
    "top-2, so only the balancing losses trained it. Fix: k=2 of 8 experts of width F/2 with Mixtral's "
    "renormalised gate (the same FFN FLOPs and active parameters as the dense twin, fine-grained experts). "
    "(2) Retrieval had too sparse a signal: the answer is 6 of 128 targets per window. Fix: loss = CE(all) + "
    "w * CE(answer) with w = 1 (retrieval weighs as much as the LM, as synthetic-retrieval training puts its "
    "loss on the answers), the same for both models. Checked and not at fault: every answer target lies inside "
    "the window after the whole question (test), and the global layers see the needle (the dense twin's answer "
    "CE fell from 2.75 to 0.13 during V1). "
    "V1 (kept = the quick preset): MoE 2.380 vs dense 2.300 nats/char; NIAH recall <= 128: MoE mean 0.991, "
    "min cell 0.9 (96: 1.00; 128: 0.98, two of 11 cells miss one probe of 10), dense mean 0.586, min cell 0.3; "
    "beyond training, 256*: 0.25 / 0.01, 512*: 0.14 / 0.00, the MoE finding only needles near the question "
    "(depth >= 90% at 256, 100% at 512), i.e. within the distances it was trained on. "
    "V2 = V1 with top-1 Switch experts of width F (the gradient fault left in): MoE 2.566 vs dense 2.300; MoE "
    "recall <= 128 mean 0.982, min cell 0.7. "
    "V3 = V1 with seq_len 256, batch 8 (same characters; the 77 template characters become 30% of a window "
    "instead of 60%): MoE 1.855 vs dense 1.897; recall 0 for both (answer CE at chance: half the probes per "
    "step over longer haystacks), and 419 s wall sharing the 2 cores with V4 (V1 took 266 s sharing them with "
    "V2): too close to or over the 6-minute quick budget. "
    "V4 = V1 with w = 0 (ablation): MoE 2.025 vs dense 2.056; recall 0 for both. "
    "V1 at seed 1 (a robustness check run after V1 was kept, not a choice): MoE 2.211 vs dense 2.206; recall "
    "<= 128: MoE mean 0.991, min cell 0.9, dense mean 0.996, min cell 0.9. "
    "Why V1: it is the design with both faults fixed and nothing else changed; V3 was rejected for its wall "
    "time and because it halves the retrieval signal, the fault (2) being fixed; V2 and V4 are ablations. "
    "What the search shows: the MoE's NLL is lower than its twin's when the LM objective dominates (V3, V4: by "
    "0.04 and 0.03) and not when the answer term is weighted in (V1: +0.080 at seed 0, +0.005 at seed 1); the "
    "retrieval circuit forms within 900 steps once the answer is weighted, at a seed-dependent point (dense "
    "twin 0.59 at seed 0, 1.00 at seed 1), and the MoE's 0.99 misses the per-cell 99% bar by one probe in ten "
    "in two cells at both seeds, so (b) sits at the edge of the bar at this budget."
)


@experiment(
    name="gemini15-moe",
    system="Gemini 1.5",
    paper="Gemini 1.5 (Gemini Team 2024, arXiv 2403.05530)",
    claim=(
        "A sparse MoE LM reaches lower validation NLL than a dense LM with the same active parameters on the same "
        "tokens, and retrieves a needle in a haystack near-perfectly (>= 99%) at every depth up to its context"
    ),
    config=Gemini15MoEConfig,
    threads=1,
)
def run(cfg: Gemini15MoEConfig, run: Run) -> Result:
    from foresight.lm.moe_lm import expert_load_stats, init_twins
    from foresight.lm.niah import NeedleObjective, evaluate_niah, plot_recall_grids
    from foresight.lm.train import train_phase

    data = _load_data(cfg, run)
    V = len(data.vocab)
    moe_cfg = _moe_config(cfg, V)
    tcfg = _train_config(cfg, run.seed_for("data-order"))  # the same windows in the same order for both
    objective = NeedleObjective(data.train, cfg.answer_weight)  # the same loss for both models

    dense, moe = init_twins(_dense_config(cfg, V), moe_cfg, seed=run.seed_for("init"))
    dense, dense_hist = train_phase(run, "dense", dense, tcfg, data.train, data.val, objective)
    moe, moe_hist = train_phase(run, "moe", moe, tcfg, data.train, data.val, objective, model_config=moe_cfg)
    models = {"moe": moe, "dense": dense}
    lengths = cfg.grid_lengths()

    def niah(name: str) -> dict:
        g = evaluate_niah(
            models[name],
            data.val_text,
            data.vocab,
            lengths=lengths,
            depths=cfg.niah_depths,
            needles=cfg.niah_needles,
            word_len=cfg.word_len,
            seed=run.seed_for("niah-probes"),  # the same probes for both models
            batch_size=cfg.batch_size,
            device=run.device,
            progress=run.progress,
        )
        for i, L in enumerate(g.lengths):
            run.log(phase="niah", model=name, length=L, recall=float(g.recall[i].mean()), recall_by_depth=g.recall[i])
        return g.to_dict()

    grids = {k: NIAHResult.from_dict(g) for k, g in run.sweep("niah", list(models), niah).items()}

    def load() -> dict:
        n = min(len(data.val), max(1, cfg.eval_batches) * cfg.batch_size)
        batches = (data.val.batch(np.arange(s, min(n, s + cfg.batch_size)))[0] for s in range(0, n, cfg.batch_size))
        return expert_load_stats(moe, batches)

    load = run.phase("expert-load", load)

    # --- verdict ---------------------------------------------------------------------------------
    T = cfg.seq_len
    nll = {"moe": moe_hist[-1]["val_loss"], "dense": dense_hist[-1]["val_loss"]}
    verdict_, claim_a, claim_b = verdict(nll["moe"], nll["dense"], grids["moe"].cells(T))

    # --- numbers ---------------------------------------------------------------------------------
    counts = {"moe": (moe.num_params(), moe.num_active_params())}
    n_dense = sum(p.numel() for p in dense.parameters())
    counts["dense"] = (n_dense, n_dense)
    per_layer = np.asarray(load["per_layer"])  # [L_moe, E]
    train_lines = [m for m in run.metrics() if m.get("phase") == "moe" and "aux_loss" in m]
    last = train_lines[-1] if train_lines else {}
    metrics = {
        "moe_val_nll": nll["moe"],
        "dense_val_nll": nll["dense"],
        "moe_minus_dense_nll": nll["moe"] - nll["dense"],
        "claim_a_lower_nll": claim_a,
        "claim_b_niah": claim_b,
        "moe_params": counts["moe"][0],
        "moe_active_params": counts["moe"][1],
        "dense_params": counts["dense"][0],
        "train_tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
        "trained_context": T,
        "corpus": data.corpus,
        "vocab_size": V,
        "final_aux_loss": last.get("aux_loss", float("nan")),
        "final_z_loss": last.get("z_loss", float("nan")),
        "val_expert_fraction_min": load["fraction_min"],
        "val_expert_fraction_max": load["fraction_max"],
    }
    for name, g in grids.items():
        metrics[f"{name}_niah_recall_in_range"] = g.mean(T)
        metrics[f"{name}_niah_min_cell_in_range"] = g.min(T)
        for L, row in zip(g.lengths, g.recall, strict=True):
            metrics[f"{name}_niah_recall_{L}"] = float(np.mean(row))

    table = []
    for name, label in (("dense", "dense twin"), ("moe", f"MoE ({cfg.num_experts} experts, top-{cfg.top_k})")):
        row = {
            "model": label,
            "params": counts[name][0],
            "active params": counts[name][1],
            "val NLL (nats/char)": nll[name],
            f"NIAH recall <= {T}": metrics[f"{name}_niah_recall_in_range"],
            f"min cell <= {T}": metrics[f"{name}_niah_min_cell_in_range"],
        }
        for L in lengths:
            row[f"recall @{L}{'*' if L > T else ''}"] = metrics[f"{name}_niah_recall_{L}"]
        table.append(row)

    # --- figures ---------------------------------------------------------------------------------
    plot_recall_grids(run.figure("niah_recall.png"), {"MoE": grids["moe"], "dense": grids["dense"]}, T)
    plot_lines(
        run.figure("val_nll_curves.png"),
        {
            label: ([h["tokens"] for h in hist], [h["val_loss"] for h in hist])
            for label, hist in (("dense twin", dense_hist), ("MoE", moe_hist))
        },
        title="Validation NLL on held-out text while training",
        xlabel="training tokens (characters)",
        ylabel="validation NLL (nats/char)",
    )
    plot_bars(
        run.figure("expert_load.png"),
        [f"block {i}" for i in moe_cfg.moe_layers],
        {f"expert {e}": per_layer[:, e].tolist() for e in range(cfg.num_experts)},
        title=f"Share of tokens per expert on held-out text (uniform = {1 / cfg.num_experts:.3f})",
        ylabel="fraction of token-slots",
    )
    steps = [m["step"] for m in train_lines]
    plot_lines(
        run.figure("router_diagnostics.png"),
        {
            "aux loss (1 = uniform)": (steps, [m["aux_loss"] for m in train_lines]),
            "expert fraction max x E": (steps, [m["expert_fraction_max"] * cfg.num_experts for m in train_lines]),
            "expert fraction min x E": (steps, [m["expert_fraction_min"] * cfg.num_experts for m in train_lines]),
        },
        title="MoE router while training (mean over blocks / extremes over blocks and experts)",
        xlabel="step",
        ylabel="value",
    )

    H = probe_overhead(cfg.word_len)
    protocol = (
        f"Corpus {data.corpus} at character level ({V} symbols; last {cfg.val_fraction:.0%} held out). "
        f"Both models: Gemma 2 decoder, {cfg.layers} blocks, d={cfg.hidden}, {cfg.heads} heads of {cfg.head_dim}, "
        f"local window {cfg.sliding_window}; dense FFN F={cfg.intermediate} vs {cfg.num_experts} experts of "
        f"F={cfg.intermediate // cfg.top_k} each with top-{cfg.top_k} {cfg.gating} gating in every block "
        f"(capacity factor {cfg.capacity_factor or 'dropless'}, aux {cfg.aux_loss_coef}, z {cfg.z_loss_coef}). "
        f"Params: dense {counts['dense'][0]}, MoE {counts['moe'][0]} total / {counts['moe'][1]} active per token. "
        f"Same init seed for shared parts, same {cfg.steps} AdamW steps x {cfg.batch_size} windows of {T} chars "
        f"(lr {cfg.lr}, warmup-cosine), each window one needle probe of length U[{cfg.shortest_probe()}, {T + 1}] "
        f"at depth U[0, 100]%, followed by more corpus text; loss = CE on every character + "
        f"{cfg.answer_weight:g} x CE on the answer characters (the same for both models). Validation NLL on "
        f"{min(len(data.val), cfg.eval_batches * cfg.batch_size)} plain held-out windows. NIAH: lengths "
        f"{list(lengths)} x depths {list(cfg.niah_depths)} x {cfg.niah_needles} probes, haystacks from held-out "
        f"text ({H} characters per probe are needle, question and answer), exact match of the greedy "
        f"{cfg.word_len}-letter answer and its full stop."
    )
    notes = data.note + (
        "Toy scale and a stand-in recipe: the Gemini 1.5 report discloses neither its MoE configuration nor its "
        "training data, so claim (a) is checked Switch-style (equal active parameters and equal tokens, not "
        "equal wall time: the MoE's dispatch costs extra on a CPU) and claim (b) only within a char-level "
        "context of a few hundred characters that the training covers. Lengths marked * are beyond the "
        "trained context (extrapolation; expected to fail with RoPE and no long-context training) and are "
        "not in the rule. With n probes per cell, a cell passes the 99% bar only when all n are found. "
        + _DESIGN_SEARCH
    )
    return Result(
        verdict=verdict_,
        rule=RULE,
        metrics=metrics,
        table=table,
        figures=["niah_recall.png", "val_nll_curves.png", "expert_load.png", "router_diagnostics.png"],
        protocol=protocol,
        notes=notes,
    )
