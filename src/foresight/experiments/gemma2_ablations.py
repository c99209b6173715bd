"""Gemma 2's own ablations (report §5, Tables 7-10), at toy scale, each arm on the same tokens and seeds.

The Gemma 2 report backs four design choices with ablations (../shared/papers/gemma2.md, end; docs/gemma2.md,
"Ablations"). Each is rerun here on one corpus with tiny Gemma 2 models (soft-caps, alternating local/global
layers, GQA), every arm trained on the same windows in the same order from the same seed:

1. Table 7, distillation vs training from scratch across student sizes: one teacher, three student sizes
   spanning > 4x in parameters, next-token (NTP) and distilled (KD, tau^2 KL from the online teacher)
   students from one init per seed.
2. Table 10, the sliding window at inference: models trained with window W evaluated at W, W/2, W/4, at
   W = 1 (the control: local layers see only the current token, so the metric must be able to move) and
   all-global (W = the window length).
3. Table 8, GQA vs MHA at equal width and depth (MHA has more parameters; KV-cache bytes reported).
4. Table 9, deep vs wide at equal parameter count (within 2 %).
The GQA arm of (3) is the deep arm of (4), and (2) evaluates the deep arm, so each seed trains
1 + 2 x 3 students + 3 twins; the teacher is trained once. Verdict rules are pure functions below, fixed
before the evaluation run; the pilot ran at the quick scale's seeds (100-102, then with 393k/65k/131k teacher/student/twin
tokens; quick was shortened afterwards to fit make reproduce), disjoint from full's (0-4).
Phases: teacher, then <arm>-s<seed> per training (checkpointed; ``--resume`` continues).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from foresight.core.config import Config, check_scale
from foresight.core.registry import Result, experiment
from foresight.core.report import plot_bars, plot_lines
from foresight.core.run import Run, seed_everything
from foresight.core.stats import Interval, mean_std, paired_ci, t_interval
from foresight.experiments.gemma2_distillation import load_data, train_config

# The paper's numbers (../shared/papers/gemma2.md): metric, arms, values.
PAPER = {
    "distillation": ("val perplexity, 7B teacher", {"200M": (23, 21), "400M": (19, 17), "1B": (17, 15)}),
    "window": ("val perplexity, 9B", {"4096": 1.63, "2048": 1.63, "1024": 1.64}),
    "gqa": ("average of 4 benchmarks, 9B", {"MHA": 50.3, "GQA": 50.8}),
    "depth": ("average of 4 benchmarks, 9B", {"wide": 50.8, "deep": 52.0}),
}


@dataclass(frozen=True)
class Gemma2AblationsConfig(Config):
    corpus: str = "auto"  # "auto" = tinyshakespeare if it resolves, else the built-in stdlib docstrings
    vocab_size: int = 1024
    seq_len: int = 128  # T; every model is trained with local window W = T / 2 (Gemma 2: 4096 of 8192)
    val_fraction: float = 0.1
    train_windows: int = 0  # 0 = all
    head_dim: int = 16
    batch_size: int = 8
    warmup_fraction: float = 0.05
    eval_batches: int = 16  # validation batches during training (curves)
    eval_windows: int = 0  # validation windows behind the final numbers (0 = every one)
    precision: str = "auto"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # evaluation seeds (quick's 100-102 were the pilot)
    # Table 7: one teacher, students of three widths (heads = width / head_dim, kv heads = heads / 2)
    teacher_width: int = 128
    teacher_layers: int = 4
    teacher_tokens: int = 2_000_000
    teacher_lr: float = 2e-3
    student_widths: tuple[int, ...] = (32, 64, 96)
    student_layers: int = 2
    student_tokens: int = 262_144
    student_lr: float = 5e-3
    # Tables 8-10: the deep GQA model, its MHA twin and its wide twin
    deep_width: int = 64
    deep_layers: int = 6
    deep_heads: int = 4
    wide_layers: int = 2
    twin_tokens: int = 524_288
    twin_lr: float = 3e-3
    param_tolerance: float = 0.02  # deep vs wide parameter counts
    # rules' margins (relative): window ppl change, GQA-vs-MHA NLL difference
    window_margin: float = 0.01
    gqa_margin: float = 0.01

    choices: ClassVar[dict[str, tuple]] = {"precision": ("auto", "bf16", "fp32")}

    @classmethod
    def preset(cls, scale: str) -> Gemma2AblationsConfig:
        check_scale(scale)
        if scale == "tiny":
            return cls(
                vocab_size=300,
                seq_len=32,
                train_windows=200,
                head_dim=8,
                eval_batches=2,
                eval_windows=64,
                seeds=(0, 1),
                teacher_width=32,
                teacher_layers=2,
                teacher_tokens=8192,
                student_widths=(8, 16),
                student_layers=1,
                student_tokens=2048,
                deep_width=16,
                deep_layers=4,
                deep_heads=2,
                wide_layers=1,
                twin_tokens=2048,
                param_tolerance=0.05,
            )
        if scale == "quick":
            # the pilot (seeds disjoint from full's) and part of make reproduce: ~3 CPU-minutes
            return cls(
                seeds=(100, 101, 102),
                teacher_tokens=262_144,
                student_tokens=49_152,
                twin_tokens=65_536,
                eval_batches=4,
                eval_windows=128,
            )
        return cls()

    def validate(self) -> None:
        ints = ("vocab_size", "seq_len", "head_dim", "batch_size", "teacher_width", "teacher_layers", "eval_windows")
        ints += ("teacher_tokens", "student_layers", "deep_width", "deep_layers", "deep_heads", "wide_layers")
        for name in ints:
            if getattr(self, name) < (0 if name == "eval_windows" else 1):
                raise ValueError(f"{name} must be >= 1 (eval_windows >= 0), got {getattr(self, name)}")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be >= 2 distinct values (intervals need them), got {self.seeds}")
        if len(self.student_widths) < 2:
            raise ValueError(f"student_widths needs >= 2 sizes, got {self.student_widths}")
        for w in (*self.student_widths, self.teacher_width):
            if w % self.head_dim:
                raise ValueError(f"width {w} is not a multiple of head_dim={self.head_dim}")
        if self.deep_heads % 2 or self.wide_layers >= self.deep_layers:
            raise ValueError(
                f"need an even deep_heads (GQA groups of 2) and wide_layers < deep_layers, got "
                f"{self.deep_heads} and {self.wide_layers} vs {self.deep_layers}"
            )
        if min(self.student_tokens, self.twin_tokens) < self.batch_size * self.seq_len or self.seq_len < 8:
            raise ValueError(
                f"student_tokens={self.student_tokens} and twin_tokens={self.twin_tokens} must be at least one "
                f"batch ({self.batch_size * self.seq_len} tokens) and seq_len >= 8 (windows T/2, T/4, T/8)"
            )
        for name in ("val_fraction", "param_tolerance", "window_margin", "gqa_margin"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------------
# Verdict rules (pure)
# ---------------------------------------------------------------------------------------------

RULES = {
    "distillation": "at each student size the 95% paired t-interval of NTP - KD val NLL over seeds is above 0 "
    "(reproduced: every size; partial: some)",
    "window": "relative val-perplexity change from W to W/2 and to W/4 has a 95% t-interval upper end <= "
    "window_margin, and the control (W = 1) moves it by more than window_margin (lower end) so the test "
    "can fail (reproduced: both W/2 and W/4; partial: W/2 only)",
    "gqa": "95% paired t-interval of GQA - MHA val NLL has upper end < gqa_margin x mean MHA NLL "
    "(partial: only the mean is)",
    "depth": "95% paired t-interval of wide - deep val NLL is above 0 (partial: only the mean is)",
}
RULE = (
    "reproduced iff all four ablations reproduce, not reproduced iff none reproduces or is partial, else partial. "
    + " | ".join(f"{k}: {v}" for k, v in RULES.items())
)


def distillation_rule(ntp: dict[str, Sequence[float]], kd: dict[str, Sequence[float]]) -> tuple[str, dict]:
    """Per-size paired intervals of NTP - KD NLL (seed-aligned); verdict by :data:`RULES` ``distillation``."""
    cis = {size: paired_ci(ntp[size], kd[size]) for size in ntp}
    held = sum(ci.low > 0 for ci in cis.values())
    return ("reproduced" if held == len(cis) else "partial" if held else "not reproduced"), cis


def window_rule(changes: dict[str, Sequence[float]], margin: float) -> tuple[str, dict]:
    """``changes``: per-seed relative perplexity change vs the trained window, keys "W/2", "W/4", "1"."""
    cis = {k: t_interval(v) for k, v in changes.items()}
    if not cis["1"].low > margin:  # the window does not matter to these models: the test cannot fail
        return "not reproduced", cis
    small = [cis[k].high <= margin for k in ("W/2", "W/4")]
    return ("reproduced" if all(small) else "partial" if small[0] else "not reproduced"), cis


def gqa_rule(gqa: Sequence[float], mha: Sequence[float], margin: float) -> tuple[str, Interval]:
    """GQA no worse than MHA by more than ``margin`` x mean MHA NLL (paired over seeds)."""
    ci = paired_ci(gqa, mha)
    bound = margin * mean_std(mha)[0]
    return ("reproduced" if ci.high < bound else "partial" if ci.mean < bound else "not reproduced"), ci


def depth_rule(wide: Sequence[float], deep: Sequence[float]) -> tuple[str, Interval]:
    """Deep beats wide at equal parameters (paired over seeds)."""
    ci = paired_ci(wide, deep)
    return ("reproduced" if ci.low > 0 else "partial" if ci.mean > 0 else "not reproduced"), ci


def overall(verdicts: Sequence[str]) -> str:
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    return "not reproduced" if all(v == "not reproduced" for v in verdicts) else "partial"


# ---------------------------------------------------------------------------------------------
# Wiring
# ---------------------------------------------------------------------------------------------


def _gemma(cfg: Gemma2AblationsConfig, width: int, layers: int, heads: int, kv_heads: int | None = None):
    from foresight.lm.gemma2 import Gemma2Config

    return Gemma2Config.tiny(
        vocab_size=cfg.vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 2) if kv_heads is None else kv_heads,
        head_dim=cfg.head_dim,
        query_pre_attn_scalar=float(cfg.head_dim),
        sliding_window=cfg.seq_len // 2,
        max_position_embeddings=cfg.seq_len,
    )


def _fmt_ci(ci: Interval, scale: float = 1.0, unit: str = "") -> str:
    return f"{ci.mean * scale:+.3g}{unit} [{ci.low * scale:+.3g}, {ci.high * scale:+.3g}]"


def _mean_sd(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.4f} ± {s:.4f}"


@experiment(
    name="gemma2-ablations",
    system="Gemma 2",
    paper="Gemma Team, Gemma 2: Improving Open Language Models at a Practical Size, 2024 (§5, Tables 7-10)",
    claim=(
        "Gemma 2's ablations: distillation beats training from scratch at every student size; shrinking the "
        "sliding window at inference barely moves perplexity; GQA matches MHA; deep beats wide at equal "
        "parameters"
    ),
    config=Gemma2AblationsConfig,
    threads=1,
)
def run(cfg: Gemma2AblationsConfig, run: Run) -> Result:
    from foresight.lm.distill import DistillationObjective, perplexity
    from foresight.lm.gemma2 import Gemma2
    from foresight.lm.train import train_phase, validation_nll
    from foresight.lm.twins import at_window, count_parameters, kv_cache_bytes, match_parameters, mha_twin

    data, corpus, note = load_data(cfg, run)

    def nll(model, window: int | None = None) -> float:  # every validation window, fixed order
        model = model if window is None else at_window(model, window)
        return validation_nll(model, data.val, cfg.eval_windows, cfg.batch_size, cfg.precision)

    def train(name: str, mcfg, tokens: int, lr: float, seed: int, objective=None, eval_points: int = 4):
        seed_everything(run.seed_for(f"init-{seed}"))  # one init per (architecture, seed), whatever the arm
        tcfg = train_config(cfg, tokens, lr, run.seed_for(f"order-{seed}"), eval_points)
        return train_phase(run, name, Gemma2(mcfg), tcfg, data.train, data.val, objective)

    # -- Table 7: distillation across student sizes ---------------------------------------------
    teacher_cfg = _gemma(cfg, cfg.teacher_width, cfg.teacher_layers, cfg.teacher_width // cfg.head_dim)
    teacher, _ = train("teacher", teacher_cfg, cfg.teacher_tokens, cfg.teacher_lr, seed=-1, eval_points=2)
    teacher.eval().requires_grad_(False)
    kd = DistillationObjective(teacher=teacher, temperature=1.0, alpha=1.0)  # Gemma 2: pure KD
    student_cfgs = {
        w: _gemma(cfg, w, cfg.student_layers, w // cfg.head_dim, max(1, w // cfg.head_dim // 2))
        for w in cfg.student_widths
    }
    sizes = {w: f"{count_parameters(c) / 1e3:.0f}k" for w, c in student_cfgs.items()}
    ntp = {sizes[w]: [] for w in cfg.student_widths}
    kdl = {sizes[w]: [] for w in cfg.student_widths}
    for seed in cfg.seeds:
        for w, scfg in student_cfgs.items():
            for arm, objective, out in (("ntp", None, ntp), ("kd", kd, kdl)):
                model, _ = train(f"{arm}-d{w}-s{seed}", scfg, cfg.student_tokens, cfg.student_lr, seed, objective)
                out[sizes[w]].append(nll(model))
    teacher_nll = nll(teacher)

    # -- Tables 8-10: deep (GQA), its MHA twin, its wide twin ----------------------------------
    deep_cfg = _gemma(cfg, cfg.deep_width, cfg.deep_layers, cfg.deep_heads)
    twins = {
        "deep (GQA)": deep_cfg,
        "deep (MHA)": mha_twin(deep_cfg),
        "wide (GQA)": match_parameters(deep_cfg, cfg.wide_layers, count_parameters(deep_cfg), cfg.param_tolerance),
    }
    slugs = {
        "deep (GQA)": ("deep", "deep_gqa"),
        "deep (MHA)": ("deep-mha", "deep_mha"),
        "wide (GQA)": ("wide", "wide_gqa"),
    }
    W = cfg.seq_len // 2
    windows = {"W": W, "W/2": W // 2, "W/4": W // 4, "1": 1, "global": cfg.seq_len}
    twin_nll = {arm: [] for arm in twins}
    window_nll = {k: [] for k in windows}
    for seed in cfg.seeds:
        for arm, mcfg in twins.items():
            model, _ = train(f"{slugs[arm][0]}-s{seed}", mcfg, cfg.twin_tokens, cfg.twin_lr, seed)
            twin_nll[arm].append(nll(model))
            if arm == "deep (GQA)":
                for k, w in windows.items():
                    window_nll[k].append(twin_nll[arm][-1] if w == W else nll(model, w))

    # -- verdicts ---------------------------------------------------------------------------------
    v_kd, kd_cis = distillation_rule(ntp, kdl)
    ppl = {k: [perplexity(x) for x in v] for k, v in window_nll.items()}
    changes = {k: [p / p0 - 1 for p, p0 in zip(ppl[k], ppl["W"], strict=True)] for k in windows if k != "W"}
    v_win, win_cis = window_rule({k: changes[k] for k in ("W/2", "W/4", "1")}, cfg.window_margin)
    v_gqa, gqa_ci = gqa_rule(twin_nll["deep (GQA)"], twin_nll["deep (MHA)"], cfg.gqa_margin)
    v_depth, depth_ci = depth_rule(twin_nll["wide (GQA)"], twin_nll["deep (GQA)"])
    verdicts = {"distillation": v_kd, "window": v_win, "gqa": v_gqa, "depth": v_depth}

    # -- tables (paper beside ours) ---------------------------------------------------------------
    n = len(cfg.seeds)
    t7 = [
        {
            "student": f"d={w}, {cfg.student_layers} layers ({sizes[w]} params)",
            "NTP val NLL": _mean_sd(ntp[sizes[w]]),
            "KD val NLL": _mean_sd(kdl[sizes[w]]),
            "NTP ppl": perplexity(mean_std(ntp[sizes[w]])[0]),
            "KD ppl": perplexity(mean_std(kdl[sizes[w]])[0]),
            f"NTP - KD, 95% CI (n={n})": str(kd_cis[sizes[w]]),
            "paper (size: scratch → distilled ppl)": f"{p}: {a} → {b}",
        }
        for w, (p, (a, b)) in zip(cfg.student_widths, PAPER["distillation"][1].items(), strict=False)
    ]
    t7.append({"student": f"teacher d={cfg.teacher_width}, {cfg.teacher_layers} layers", "NTP val NLL": teacher_nll})
    paper_win = {"W": "4096: 1.63", "W/2": "2048: 1.63", "W/4": "1024: 1.64"}
    t10 = [
        {
            "window at inference": f"{k} = {w}" + (" (trained)" if k == "W" else " (control)" if k == "1" else ""),
            "val ppl (mean ± sd)": _mean_sd(ppl[k]),
            "relative change vs W, 95% CI": "" if k == "W" else _fmt_ci(t_interval(changes[k]), 100, "%"),
            "paper (9B, window: ppl)": paper_win.get(k, ""),
        }
        for k, w in windows.items()
    ]
    params = {arm: count_parameters(c) for arm, c in twins.items()}
    paper_arm = {
        "deep (GQA)": ("GQA 50.8", "deep 52.0"),
        "deep (MHA)": ("MHA 50.3", ""),
        "wide (GQA)": ("", "wide 50.8"),
    }

    def arm_rows(arms: Sequence[str], paper_col: int) -> list[dict]:
        return [
            {
                "model": arm,
                "layers × width (F)": f"{twins[arm].num_layers} × {twins[arm].hidden_size} ({twins[arm].intermediate_size})",
                "heads / kv heads": f"{twins[arm].num_heads} / {twins[arm].num_kv_heads}",
                "params": params[arm],
                "KV cache at T (bf16 bytes)": kv_cache_bytes(twins[arm], cfg.seq_len),
                "val NLL (mean ± sd)": _mean_sd(twin_nll[arm]),
                "val ppl": perplexity(mean_std(twin_nll[arm])[0]),
                "paper (9B, avg of 4 benchmarks)": paper_arm[arm][paper_col],
            }
            for arm in arms
        ]

    t8, t9 = arm_rows(["deep (GQA)", "deep (MHA)"], 0), arm_rows(["deep (GQA)", "wide (GQA)"], 1)
    tables = {
        f"Table 7 — distillation vs from scratch across student sizes ({verdicts['distillation']})": t7,
        f"Table 8 — GQA vs MHA at equal width and depth ({v_gqa}: GQA - MHA NLL {gqa_ci})": t8,
        f"Table 9 — deep vs wide at equal parameters ({v_depth}: wide - deep NLL {depth_ci})": t9,
        f"Table 10 — sliding window at inference, deep GQA model ({verdicts['window']})": t10,
    }

    # -- figures ----------------------------------------------------------------------------------
    labels = [sizes[w] for w in cfg.student_widths]
    plot_bars(
        run.figure("distillation_by_size.png"),
        labels,
        {
            "from scratch (NTP)": [mean_std(ntp[s])[0] for s in labels],
            "distilled": [mean_std(kdl[s])[0] for s in labels],
        },
        errors={
            "from scratch (NTP)": [mean_std(ntp[s])[1] for s in labels],
            "distilled": [mean_std(kdl[s])[1] for s in labels],
        },
        title="Table 7: val NLL by student size (mean ± sd over seeds)",
        ylabel="validation NLL (nats/token)",
    )
    order = sorted(windows, key=windows.get)  # 1, W/4, W/2, W, global
    plot_lines(
        run.figure("window_at_inference.png"),
        {f"seed {s}": ([windows[k] for k in order], [ppl[k][i] for k in order]) for i, s in enumerate(cfg.seeds)},
        title=f"Table 10: val perplexity vs inference window (trained at W={W})",
        xlabel="sliding window of local layers at inference (keys)",
        ylabel="validation perplexity",
    )
    for fig, arms, title in (
        ("gqa_vs_mha.png", ["deep (GQA)", "deep (MHA)"], "Table 8: GQA vs MHA, 6 layers x 64"),
        ("deep_vs_wide.png", ["deep (GQA)", "wide (GQA)"], "Table 9: deep vs wide at equal parameters"),
    ):
        plot_bars(
            run.figure(fig),
            arms,
            {"val NLL": [mean_std(twin_nll[a])[0] for a in arms]},
            errors={"val NLL": [mean_std(twin_nll[a])[1] for a in arms]},
            title=f"{title} (mean ± sd over seeds)",
            ylabel="validation NLL (nats/token)",
        )

    metrics = {
        **{f"verdict_{k}": v for k, v in verdicts.items()},
        "teacher_val_nll": teacher_nll,
        "teacher_params": count_parameters(teacher_cfg),
        **{f"ntp_val_nll_{s}": ntp[s] for s in ntp},
        **{f"kd_val_nll_{s}": kdl[s] for s in kdl},
        **{f"ntp_minus_kd_{s}": ci.to_dict() for s, ci in kd_cis.items()},
        **{f"window_ppl_{k}": v for k, v in ppl.items()},
        **{f"window_change_{k}": ci.to_dict() for k, ci in win_cis.items()},
        **{f"val_nll_{slugs[a][1]}": v for a, v in twin_nll.items()},
        **{f"params_{slugs[a][1]}": p for a, p in params.items()},
        "gqa_minus_mha": gqa_ci.to_dict(),
        "wide_minus_deep": depth_ci.to_dict(),
        "corpus": corpus,
        "train_tokens_available": len(data.train) * cfg.seq_len,
        "val_tokens": len(data.val) * cfg.seq_len,
    }
    protocol = (
        f"Corpus {corpus} ({metrics['train_tokens_available']} training tokens in windows of T={cfg.seq_len}, "
        f"byte-level BPE with {cfg.vocab_size} tokens, last {cfg.val_fraction:.0%} held out: "
        f"{metrics['val_tokens']} tokens, "
        f"{'every window' if not cfg.eval_windows else f'the first {cfg.eval_windows} windows'} scored). Tiny Gemma 2 blocks (soft-caps, alternating "
        f"local/global layers with trained window W={W}, head_dim {cfg.head_dim}, GQA with 2 query heads per kv "
        f"head). Seeds {list(cfg.seeds)}: per seed one init per architecture and one data order shared by every "
        f"arm, so differences are paired. Table 7: a teacher of {metrics['teacher_params']} params "
        f"(d={cfg.teacher_width}, {cfg.teacher_layers} layers, {cfg.teacher_tokens} tokens, trained once) and "
        f"students of {', '.join(labels)} params (d={list(cfg.student_widths)}, {cfg.student_layers} layers), "
        f"{cfg.student_tokens} tokens each, NTP vs pure KD (tau=1, alpha=1, teacher online). Tables 8-10: deep "
        f"GQA model ({cfg.deep_layers} × {cfg.deep_width}, {params['deep (GQA)']} params), its MHA twin "
        f"({params['deep (MHA)']} params) and its wide twin ({twins['wide (GQA)'].num_layers} × "
        f"{twins['wide (GQA)'].hidden_size}, {params['wide (GQA)']} params, within {cfg.param_tolerance:.0%}), "
        f"{cfg.twin_tokens} tokens each; Table 10 evaluates the deep GQA models at other windows (the same "
        "weights, only the local layers' mask changes). AdamW with warmup + cosine for every training."
    )
    notes = note + (
        "Toy scale: the paper's ablations use 2B-9B models on hundreds of billions of tokens and score "
        "benchmarks (Tables 8-9) or perplexity; here every model is under 2M parameters on one small corpus and "
        "the metric is validation NLL/perplexity, so only the direction and rough size of each effect are "
        "compared, never the absolute numbers. Paper metrics beside ours are named in each table. The teacher "
        f"is {metrics['teacher_params'] / count_parameters(student_cfgs[max(cfg.student_widths)]):.1f}x to "
        f"{metrics['teacher_params'] / count_parameters(student_cfgs[min(cfg.student_widths)]):.1f}x its students "
        "(the paper: 7B over 1B-200M, 7x-35x). The wide twin keeps the deep model's heads and head_dim (the "
        "residual and feed-forward widths absorb the parameters). MHA has more parameters than GQA at equal "
        "width and depth (the reason Gemma chose GQA, with its smaller KV cache); decode speed of the twins is "
        "measured in benchmarks/gqa_decode.py rather than here, so that metrics stay bit-identical across reruns."
    )
    return Result(
        verdict=overall(list(verdicts.values())),
        rule=RULE,
        metrics=metrics,
        tables=tables,
        figures=["distillation_by_size.png", "gqa_vs_mha.png", "deep_vs_wide.png", "window_at_inference.png"],
        protocol=protocol,
        notes=notes,
    )
