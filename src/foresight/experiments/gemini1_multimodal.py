"""Gemini 1.0: one natively multimodal decoder, trained jointly on interleaved image, audio and text.

Gemini models are "multimodal from the beginning": one Transformer decoder takes text "interleaved with
... audio and visual inputs" (docs/gemini1_multimodal.md). Claim checked at toy scale:
ONE decoder trained jointly on interleaved 8x8 digit images (sklearn digits), spoken digits (FSDD,
resampled to 16 kHz, log-mel) and number words does as well as same-size single-task specialists on
each modality's task and also solves a cross-modal composite task no single-modality model can see:

    image      <image>*16 is W                 (held-out images)
    audio      <audio>*A is W                  (FSDD official test takes 0-4)
    text       Wa plus Wb equals Wsum          (number-word arithmetic)
    composite  <image>*16 plus <audio>*A equals Wsum   (held-out images AND held-out takes)

Protocol:
    1. Model: `foresight.lm.multimodal.MultimodalDecoder` (Gemma 2 blocks; Fuyu linear patch embedding;
       Conv1d+Linear audio encoder; features / normalizer scattered at the placeholders; loss on text only).
    2. Joint model: trained on an equal mix of the four tasks. Specialists (image, audio, text): the same
       architecture, init seed, optimiser, steps and batch, trained on their one task only (the same
       number of distinct training sequences as the joint model).
    3. Greedy answer accuracy per task on test sequences built from held-out images / clips.
Verdict rule (`verdict`): checks (i)-(iii) joint accuracy >= specialist accuracy - ``tolerance`` on the
image, audio and text tasks; (iv) joint composite accuracy >= max(``composite_min``, 5 x chance).
reproduced: all four hold; partial: some; not reproduced: none.
Phases: joint, image, audio, text (trainings) and eval; ``--resume`` continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from foresight.core.config import Config, check_scale
from foresight.core.registry import Result, experiment
from foresight.core.report import plot_bars, plot_lines
from foresight.core.run import Run, seed_everything

SPECIALISTS = ("image", "audio", "text")


@dataclass(frozen=True)
class Gemini1MultimodalConfig(Config):
    # decoder (Gemma 2 blocks)
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    intermediate: int = 256
    # encoders and media tokens
    patch_size: int = 2  # 8x8 digits -> 16 image tokens
    n_mels: int = 40
    audio_frames_per_second: int = 20  # 20 audio tokens per 1 s clip
    clip_seconds: float = 1.0
    audio_hidden: int = 64
    prefix_attention: str = "bidirectional"  # within each image / clip (PaliGemma-style); text causal
    # data
    test_images: int = 360  # sklearn digits held out (seeded permutation); FSDD uses its official split
    audio_takes: int = 50  # FSDD takes 0..n-1 of every digit and speaker (50 = all; test takes 0-4 always in)
    train_per_task: int = 20000  # training sequences per task (specialists: 4x this of their task)
    test_per_task: int = 1000
    # optimisation (identical for every model)
    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_fraction: float = 0.05
    # verdict
    tolerance: float = 0.05  # joint may trail a specialist by this much accuracy
    composite_min: float = 0.5  # joint composite accuracy bar (and >= 5x chance)

    choices: ClassVar[dict[str, tuple]] = {"prefix_attention": ("causal", "bidirectional")}

    @classmethod
    def preset(cls, scale: str) -> Gemini1MultimodalConfig:
        check_scale(scale)
        if scale == "tiny":
            return cls(
                hidden=32, layers=1, heads=2, kv_heads=1, head_dim=16, intermediate=64, audio_hidden=16,
                train_per_task=32, test_per_task=16, steps=4, batch_size=8, audio_takes=10,
            )  # fmt: skip
        if scale == "quick":
            # sized for <= 5 minutes on one CPU thread: four trainings of ~22 ms/step (~45 s each) + loading
            return cls(
                hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128, audio_hidden=32,
                train_per_task=6000, test_per_task=300, steps=2000, batch_size=32,
            )  # fmt: skip
        return cls()

    def validate(self) -> None:
        for name in (
            "hidden",
            "layers",
            "heads",
            "kv_heads",
            "head_dim",
            "intermediate",
            "train_per_task",
            "test_per_task",
            "steps",
            "batch_size",
            "test_images",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 5 < self.audio_takes <= 50:
            raise ValueError(
                f"audio_takes must be in (5, 50] (takes 0-4 are the official test split), got {self.audio_takes}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.tolerance <= 1 or not 0 <= self.composite_min <= 1:
            raise ValueError(
                f"tolerance and composite_min must be in [0, 1], got {self.tolerance}, {self.composite_min}"
            )
        self.model_config()  # the decoder / encoder fields validate there

    def model_config(self):
        from foresight.lm.gemma2 import Gemma2Config
        from foresight.lm.mm_data import AUDIO_ID, BOS, EOS, IMAGE_ID, PAD, TOKENS
        from foresight.lm.multimodal import MultimodalConfig

        text = Gemma2Config.tiny(
            vocab_size=len(TOKENS), hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_layers=self.layers, num_heads=self.heads, num_kv_heads=self.kv_heads, head_dim=self.head_dim,
            query_pre_attn_scalar=float(self.head_dim), sliding_window=64, max_position_embeddings=128,
            pad_token_id=PAD, bos_token_id=BOS, eos_token_ids=(EOS,),
        )  # fmt: skip
        return MultimodalConfig(
            text=text, image_token_id=IMAGE_ID, audio_token_id=AUDIO_ID, patch_size=self.patch_size,
            n_mels=self.n_mels, clip_seconds=self.clip_seconds, audio_frames_per_second=self.audio_frames_per_second,
            audio_hidden=self.audio_hidden, prefix_attention=self.prefix_attention,
        )  # fmt: skip


_VARIANTS = (
    "Variants run while building this (joint model only, quick-size decoder, seed 0, 1200 steps, accuracy on "
    "image / audio / text / composite test sequences): (1) encoder layers initialised like the decoder "
    "(Normal(0, 0.02), nn.Linear's default bias): 0.07 / 0.89 / 0.99 / 0.14 - the 2x2-pixel patch signal "
    "sat ~20x below the bias, so images stayed at chance; (2) LeCun-normal encoder weights, zero biases (kept): "
    "0.73 / 0.91 / 0.99 / 0.24, still rising. The quick budget (2000 steps) was then set by wall time, "
    "before any specialist or quick run; prefix attention was bidirectional throughout (the causal variant is "
    "implemented and tested, not run). Seed: the run's seed, never chosen by outcome."
)


def rule(tolerance: float, composite_min: float, chance: float = 0.1) -> str:
    """The verdict rule in words (the config's margins filled in)."""
    return (
        f"(i)-(iii) joint accuracy >= specialist accuracy - {tolerance} on each of the image, audio and text "
        f"tasks; (iv) joint composite (image + audio) accuracy >= max({composite_min}, 5 x chance {chance}). "
        "reproduced: all four; partial: some; not reproduced: none"
    )


def verdict(
    acc: dict[str, dict[str, float]], tolerance: float, composite_min: float, chance: float = 0.1
) -> tuple[str, dict[str, bool]]:
    """``(verdict, checks)`` by :func:`rule` from ``{model: {task: accuracy}}`` (models: joint + SPECIALISTS)."""
    checks = {f"joint_within_{t}": acc["joint"][t] >= acc[t][t] - tolerance for t in SPECIALISTS}
    checks["composite_above_bar"] = acc["joint"]["composite"] >= max(composite_min, 5 * chance)
    n = sum(checks.values())
    return ("reproduced" if n == len(checks) else "partial" if n else "not reproduced"), checks


@experiment(
    name="gemini1-multimodal",
    system="Gemini 1.0",
    paper="Gemini Team, Gemini: A Family of Highly Capable Multimodal Models, 2023 (arXiv 2312.11805)",
    claim=(
        "One natively multimodal decoder trained jointly on interleaved image, audio and text matches same-size "
        "single-modality specialists on each modality's recognition task and solves a cross-modal composite task "
        "(image digit + spoken digit arithmetic) far above chance"
    ),
    config=Gemini1MultimodalConfig,
    threads=1,
)
def run(cfg: Gemini1MultimodalConfig, run: Run) -> Result:
    from foresight.lm.mm_data import CHANCE, TASKS, MultimodalObjective, answer_accuracy, load_digit_corpus
    from foresight.lm.multimodal import MultimodalDecoder
    from foresight.lm.train import TrainConfig, train_phase

    mcfg = cfg.model_config()
    corpus = load_digit_corpus(mcfg, run.data_dir, cfg.test_images, run.seed_for("image-split"), cfg.audio_takes)
    test = corpus.examples("test", TASKS, cfg.test_per_task, mcfg, run.seed_for("examples/test"))
    tcfg = TrainConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
        warmup_steps=max(1, round(cfg.warmup_fraction * cfg.steps)), eval_every=0,
        checkpoint_every=max(1, cfg.steps // 4), log_every=max(1, cfg.steps // 100),
        seed=run.seed_for("data-order"), precision="fp32",
    )  # fmt: skip
    train_seed = run.seed_for("examples/train")  # one stream: a specialist's examples begin with the joint's
    trains = {"joint": corpus.examples("train", TASKS, cfg.train_per_task, mcfg, train_seed)}
    for t in SPECIALISTS:  # same number of distinct sequences as the joint model, all of one task
        trains[t] = corpus.examples("train", (t,), cfg.train_per_task * len(TASKS), mcfg, train_seed)
    models = {}
    for name, data in trains.items():
        seed_everything(run.seed_for("init"))  # the same init for every model
        model = MultimodalDecoder(mcfg).to(run.device)
        models[name], _ = train_phase(run, name, model, tcfg, data, None, MultimodalObjective(data), model_config=mcfg)

    def measure() -> dict:
        out = {}
        for name, model in models.items():
            out[name] = answer_accuracy(model, test, device=run.device)
            run.log(phase="eval", model=name, **{f"acc_{t}": v for t, v in out[name].items()})
        return out

    acc = run.phase("eval", measure)
    verdict_, checks = verdict(acc, cfg.tolerance, cfg.composite_min, CHANCE["composite"])

    metrics: dict = {f"{m}_acc_{t}": acc[m][t] for m in acc for t in TASKS}
    metrics.update(checks)
    metrics["params"] = sum(p.numel() for p in models["joint"].parameters())
    table = [{"model": m, **{t: round(acc[m][t], 4) for t in TASKS}} for m in acc]

    plot_bars(
        run.figure("accuracy_per_task.png"), list(TASKS),
        {"joint": [acc["joint"][t] for t in TASKS],
         "specialist (own task)": [acc[t][t] if t in SPECIALISTS else 0.0 for t in TASKS]},
        title="Greedy answer accuracy on held-out inputs", ylabel="accuracy",
    )  # fmt: skip
    lines = [x for x in run.metrics() if "loss" in x and x.get("phase") in trains]
    for key, fig in (("ce", "training_ce.png"), ("answer_acc", "training_answer_acc.png")):
        plot_lines(
            run.figure(fig),
            {p: ([x["step"] for x in lines if x["phase"] == p], [x[key] for x in lines if x["phase"] == p])
             for p in trains},
            title=f"training {key} (per step, training batch)", xlabel="step", ylabel=key, logy=key == "ce",
        )  # fmt: skip

    n_train = {k: len(v) for k, v in trains.items()}
    protocol = (
        f"Decoder: Gemma 2 blocks, {cfg.layers} layers, d={cfg.hidden}, {cfg.heads} heads ({cfg.kv_heads} kv) of "
        f"{cfg.head_dim}, F={cfg.intermediate}; {metrics['params']} parameters. Images: 8x8 sklearn digits, "
        f"{mcfg.tokens_per_image} Fuyu-style linear patch tokens of {cfg.patch_size}x{cfg.patch_size} px "
        f"({len(corpus.train_images)} train / {len(corpus.test_images)} held-out images, seeded split). Audio: FSDD "
        f"resampled once 8 -> 16 kHz, {cfg.clip_seconds:g} s clips, 40 log-mel bins at 100 frames/s pooled by a "
        f"strided Conv1d to {mcfg.audio_tokens} tokens (official split: takes 5-{cfg.audio_takes - 1} train, 0-4 test). Media features "
        f"are divided by the Gemma normalizer before the scatter; {cfg.prefix_attention} attention within each "
        f"image/clip; loss on text targets only. Joint model: {n_train['joint']} sequences, equal shares of "
        f"{', '.join(TASKS)}; specialists: {n_train['image']} sequences of their task. Every model: same init seed, "
        f"{cfg.steps} AdamW steps x {cfg.batch_size} sequences, lr {cfg.lr} warmup-cosine. Test: "
        f"{cfg.test_per_task} sequences per task from held-out images and takes; greedy answer accuracy."
    )
    notes = (
        "Toy scale; the Gemini report discloses no encoders, tokenizers or recipe, so the open models' "
        "placeholder-scatter pattern stands in (Fuyu linear patches for images, a one-layer strided conv on "
        "log-mels instead of USM features for audio). The specialists have the full architecture (both "
        "encoders) but see only their task. Chance is 0.1 for every task (best constant answer). FSDD has six "
        "speakers in both splits (the official split is by take index), so the audio test measures new "
        "recordings of known speakers. " + _VARIANTS
    )
    return Result(
        verdict=verdict_,
        rule=rule(cfg.tolerance, cfg.composite_min, CHANCE["composite"]),
        metrics=metrics,
        table=table,
        figures=["accuracy_per_task.png", "training_ce.png", "training_answer_acc.png"],
        protocol=protocol,
        notes=notes,
    )
