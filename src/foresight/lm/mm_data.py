"""Data for the toy multimodal decoder: 8x8 digit images, spoken digits, number words, interleaved.

Datasets (resolved through `foresight.core.data`: --data-dir, $FORESIGHT_DATA, user cache, pinned URL):

    "sklearn-digits"  digits.csv.gz from scikit-learn 1.9.1: 1797 images 8x8 (values 0..16) + label.
                      No official split: a seeded permutation holds out ``test_images`` images.
    "fsdd"            Free Spoken Digit Dataset @ 26eb9aa: 3000 mono 16-bit 8 kHz WAVs
                      ``{digit}_{speaker}_{index}.wav``; official split: index 0-4 test, 5-49 train.
                      3000 per-file hashes would not fit a source file, so the dataset is pinned by
                      ONE manifest digest: sha256 over the sorted lines ``"{name} {sha256(file)}\\n"``,
                      checked on every load (a modified, missing or extra file is refused). Each
                      RemoteFile's sha256 field carries that manifest digest, and downloads (file by
                      file from the pinned commit) are checked against it as a whole.

Audio front end (R6 of docs/gemini1_multimodal.md: resample once, in the dataset): the 8 kHz WAVs are read
with the stdlib ``wave`` module, resampled once to 16 kHz (Gemini's input rate) with
``scipy.signal.resample_poly(x, 2, 1)``, padded/trimmed to ``clip_seconds`` and turned into log-mel
frames (25 ms Hann window, 10 ms hop, HTK-mel triangular filters, log(power + 1e-6)) by `log_mel`,
built on ``torch.stft`` (no torchaudio).

The interleaved corpus (`build_examples`): every sequence is ``<bos> ... <answer word> <eos>``, left
padded to a common length, and one of four tasks:

    "image"      <bos> <image>*P is W <eos>               recognise the digit in the picture
    "audio"      <bos> <audio>*A is W <eos>               recognise the spoken digit
    "text"       <bos> Wa plus Wb equals Wsum <eos>        text-only arithmetic on number words
    "composite"  <bos> <image>*P plus <audio>*A equals Wsum <eos>   cross-modal: picture + speech
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foresight.core.checkpoint import atomic_write_bytes
from foresight.core.data import (
    ENV_OFFLINE,
    DataNotFoundError,
    cache_root,
    candidate_roots,
    locate,
    resolve,
    sha256_file,
)
from foresight.core.datasets import (
    DIGITS_SHA256,
    FSDD,
    FSDD_COMMIT,
    FSDD_MANIFEST_SHA256,
    FSDD_NAMES,
    FSDD_URL,
    SKLEARN_VERSION,
)
from foresight.lm.multimodal import MultimodalConfig, multimodal_targets

# The pinned files (sklearn-digits, fsdd) are declared in foresight.core.datasets.
FSDD_TEST_INDICES = range(0, 5)  # official split (README): index 0-4 test, 5-49 train
FSDD_RATE = 8000

# ---------------------------------------------------------------------------------------------
# Loading and checking
# ---------------------------------------------------------------------------------------------


def fsdd_manifest(folder: str | os.PathLike) -> str:
    """The manifest digest of ``folder/recordings/*.wav`` (see the module docstring)."""
    rec = Path(folder) / "recordings"
    lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in sorted(rec.glob("*.wav")))
    return hashlib.sha256(lines.encode()).hexdigest()


def _check_manifest(folder: Path) -> None:
    got = fsdd_manifest(folder)
    if got != FSDD_MANIFEST_SHA256:
        raise ValueError(
            f"fsdd at {folder} fails the manifest check: expected sha256 {FSDD_MANIFEST_SHA256}, got {got} "
            f"(a recording is modified, missing or extra; restore the {len(FSDD_NAMES)} files of commit {FSDD_COMMIT})"
        )


def fsdd_folder(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding recordings/ (manifest-checked), downloading into the user cache if no root has it."""
    paths = [f.path for f in FSDD.files]
    folder = locate(FSDD, paths, data_dir)
    if folder is None:
        folder = cache_root() / FSDD.name
        searched = ", ".join(f"{why}: {root / FSDD.name}" for why, root in candidate_roots(data_dir))
        if os.environ.get(ENV_OFFLINE, "") not in ("", "0"):
            raise DataNotFoundError(f"dataset 'fsdd' not found (searched {searched}) and ${ENV_OFFLINE} is set")
        try:
            for f in FSDD.files:
                if not (folder / f.path).is_file():
                    atomic_write_bytes(folder / f.path, _fetcher(f.url))
        except OSError as e:
            raise DataNotFoundError(
                f"dataset 'fsdd' not found (searched {searched}) and could not be downloaded ({e}). Put the "
                f"3000 WAVs of {FSDD_URL} under <root>/fsdd/recordings/, or pass --data-dir / set $FORESIGHT_DATA"
            ) from e
    _check_manifest(folder)
    return folder


def _fetcher(url: str):
    def write(tmp: str) -> None:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as out:
            out.write(r.read())

    return write


def load_digit_images(data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] float32 in 0..16, labels [1797] int64), sha256-checked."""
    path = resolve("sklearn-digits", ["digits.csv.gz"], data_dir=data_dir) / "digits.csv.gz"
    got = sha256_file(path)
    if got != DIGITS_SHA256:
        raise ValueError(f"{path} has sha256 {got}, expected {DIGITS_SHA256} (scikit-learn {SKLEARN_VERSION})")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # [1797, 65]
    return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1), sample rate) of a 16-bit PCM WAV, with the stdlib ``wave``."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected mono 16-bit PCM, got {w.getnchannels()} ch x {w.getsampwidth()} B")
        rate, raw = w.getframerate(), w.readframes(w.getnframes())
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0, rate


@dataclass
class SpokenDigits:
    """FSDD resampled to ``sample_rate``: one waveform per recording, in FSDD_NAMES order."""

    waves: list[np.ndarray]  # float32 at sample_rate
    labels: np.ndarray  # [N] int64 digit
    speakers: np.ndarray  # [N] str
    index: np.ndarray  # [N] int64 take index 0..49 (0-4: official test)
    sample_rate: int

    @property
    def test(self) -> np.ndarray:  # [N] bool
        return self.index < len(FSDD_TEST_INDICES)


def load_spoken_digits(
    data_dir: str | os.PathLike | None = None, sample_rate: int = 16000, takes: int = 50
) -> SpokenDigits:
    """FSDD recordings resampled ONCE from 8 kHz to ``sample_rate`` (a multiple of 8000).

    ``takes``: keep the takes 0..takes-1 of every digit and speaker (50 = all 3000 recordings; the official
    test takes 0-4 are always among them, so ``takes`` must be > 5 for a training split to remain).
    """
    from scipy.signal import resample_poly

    if sample_rate % FSDD_RATE:
        raise ValueError(f"sample_rate must be a multiple of {FSDD_RATE} Hz, got {sample_rate}")
    if isinstance(takes, bool) or not isinstance(takes, int) or not len(FSDD_TEST_INDICES) < takes <= 50:
        raise ValueError(f"takes must be an int in ({len(FSDD_TEST_INDICES)}, 50], got {takes!r}")
    folder = fsdd_folder(data_dir)
    waves, labels, speakers, index = [], [], [], []
    for name in FSDD_NAMES:
        if int(name[:-4].split("_")[2]) >= takes:
            continue
        x, rate = read_wav(folder / "recordings" / name)
        if rate != FSDD_RATE:
            raise ValueError(f"{name}: expected {FSDD_RATE} Hz, got {rate}")
        up = sample_rate // FSDD_RATE
        waves.append(resample_poly(x, up, 1).astype(np.float32) if up > 1 else x)
        d, s, i = name[:-4].split("_")
        labels.append(int(d))
        speakers.append(s)
        index.append(int(i))
    return SpokenDigits(waves, np.array(labels), np.array(speakers), np.array(index), sample_rate)


# ---------------------------------------------------------------------------------------------
# Log-mel front end
# ---------------------------------------------------------------------------------------------


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)  # HTK


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None):
    """[n_fft // 2 + 1, n_mels] float32: triangular HTK-mel filters (peak 1) on the rFFT bin frequencies."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got f_min={f_min}, f_max={f_max}")
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # [K]
    edges = torch.from_numpy(mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)))  # [M + 2]
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]  # [M] each
    up = (bins[:, None] - lo) / (mid - lo)  # [K, M]
    down = (hi - bins[:, None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def log_mel(
    waves: torch.Tensor,  # [N, S] float samples
    sample_rate: int = 16000,
    n_mels: int = 40,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
) -> torch.Tensor:  # [N, 1 + S // hop, n_mels]
    """log(mel power + 1e-6) of centred (reflect-padded) Hann-windowed frames, n_fft = window length."""
    n_fft, hop = round(sample_rate * win_ms / 1000), round(sample_rate * hop_ms / 1000)
    spec = torch.stft(
        waves,
        n_fft,
        hop_length=hop,
        window=torch.hann_window(n_fft, dtype=waves.dtype),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )  # [N, K, frames]
    power = spec.abs().pow(2).transpose(1, 2)  # [N, frames, K]
    return torch.log(power @ mel_filterbank(n_mels, n_fft, sample_rate).to(power.dtype) + 1e-6)


def clip_features(waves: list[np.ndarray], config: MultimodalConfig) -> torch.Tensor:
    """[N, F_m, M] log-mel frames of each waveform padded (zeros at the end) / trimmed to clip_seconds."""
    S = round(config.clip_seconds * config.sample_rate)
    batch = np.zeros((len(waves), S), dtype=np.float32)
    for i, w in enumerate(waves):
        batch[i, : min(S, len(w))] = w[:S]
    x = torch.from_numpy(batch)
    # chunks of 256 clips: the complex spectrogram of all 3000 FSDD clips at once would take ~0.5 GB
    chunks = [log_mel(x[i : i + 256], config.sample_rate, config.n_mels) for i in range(0, len(x), 256)]
    return torch.cat(chunks)[:, : config.mel_frames]


# ---------------------------------------------------------------------------------------------
# Vocabulary and the interleaved corpus
# ---------------------------------------------------------------------------------------------

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
)  # fmt: skip
TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<image>", "<audio>", "is", "plus", "equals", *NUMBER_WORDS)
TOKEN_ID = {t: i for i, t in enumerate(TOKENS)}
PAD, EOS, BOS = TOKEN_ID["<pad>"], TOKEN_ID["<eos>"], TOKEN_ID["<bos>"]
IMAGE_ID, AUDIO_ID = TOKEN_ID["<image>"], TOKEN_ID["<audio>"]
TASKS = ("image", "audio", "text", "composite")
CHANCE = {"image": 0.1, "audio": 0.1, "text": 0.1, "composite": 0.1}  # best constant guess (sum 9: 10/100)


def word_id(n: int) -> int:
    return TOKEN_ID[NUMBER_WORDS[n]]


def sequence(task: str, a: int, b: int, config: MultimodalConfig) -> list[int]:
    """Token ids of one example; a = image / audio / first digit, b = the second digit (text, composite)."""
    img, aud = [IMAGE_ID] * config.tokens_per_image, [AUDIO_ID] * config.audio_tokens
    is_, plus, eq = TOKEN_ID["is"], TOKEN_ID["plus"], TOKEN_ID["equals"]
    body = {
        "image": lambda: [*img, is_, word_id(a)],
        "audio": lambda: [*aud, is_, word_id(a)],
        "text": lambda: [word_id(a), plus, word_id(b), eq, word_id(a + b)],
        "composite": lambda: [*img, plus, *aud, eq, word_id(a + b)],
    }
    if task not in body:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return [BOS, *body[task](), EOS]


class MMExamples:
    """Left-padded interleaved examples + the image / audio banks they index; a Trainer data source.

    ``batch(ids)`` gives (inputs, targets) [B, T] with placeholder and padding targets ignored;
    ``media(ids)`` gives the images, clips and attention mask that go with them (in sequence order).
    """

    def __init__(self, tokens, task, answer, image_index, audio_index, images, audio, config: MultimodalConfig):
        self.tokens = tokens  # [N, T + 1] int64, left padded with PAD
        self.task = task  # [N] int64 index into TASKS
        self.answer = answer  # [N] int64 token id of the answer word
        self.image_index, self.audio_index = image_index, audio_index  # [N] int64 into the banks, -1 = none
        self.images, self.audio = images, audio  # [N_i, 8, 8] float32 (0..1), [N_a, F_m, M] float32
        self.config = config
        self.seq_len = tokens.shape[1] - 1

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        counts = {t: int((self.task == i).sum()) for i, t in enumerate(TASKS)}
        return f"MMExamples(n={len(self)}, seq_len={self.seq_len}, tasks={counts})"

    def batch(self, ids) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        tok = self.tokens[ids]
        return multimodal_targets(tok, self.config, tok != PAD)

    def media(self, ids) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(images [N_i, 8, 8] or None, audio [N_a, F_m, M] or None, attention_mask [B, T]) for rows ``ids``."""
        ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        ii, ai = self.image_index[ids], self.audio_index[ids]
        images = self.images[ii[ii >= 0]] if bool((ii >= 0).any()) else None
        audio = self.audio[ai[ai >= 0]] if bool((ai >= 0).any()) else None
        return images, audio, (self.tokens[ids, :-1] != PAD).long()

    def subset(self, task: str) -> np.ndarray:
        return np.flatnonzero(self.task.numpy() == TASKS.index(task))


def build_examples(
    tasks: tuple[str, ...],
    per_task: int,
    image_labels: np.ndarray,  # [N_i] labels of the image bank
    audio_labels: np.ndarray,  # [N_a] labels of the audio bank
    images: torch.Tensor,  # [N_i, 8, 8]
    audio: torch.Tensor,  # [N_a, F_m, M]
    config: MultimodalConfig,
    seed: int,
) -> MMExamples:
    """``per_task`` examples of each task, drawn with ``default_rng([seed, task])`` from the given banks.

    Images and clips are drawn uniformly from the banks (so their labels follow the banks' class
    balance); text digits uniformly from 0..9. Sequences are left padded to the longest possible task.
    """
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; expected one of {TASKS}")
    width = max(len(sequence(t, 0, 0, config)) for t in TASKS)
    rows, task_ids, answers, img_idx, aud_idx = [], [], [], [], []
    for t in tasks:
        k = TASKS.index(t)
        rng = np.random.default_rng([seed, k])
        for _ in range(per_task):
            i = int(rng.integers(len(image_labels))) if t in ("image", "composite") else -1
            j = int(rng.integers(len(audio_labels))) if t in ("audio", "composite") else -1
            if t == "image":
                a, b = int(image_labels[i]), 0
            elif t == "audio":
                a, b = int(audio_labels[j]), 0
            elif t == "text":
                a, b = (int(v) for v in rng.integers(10, size=2))
            else:
                a, b = int(image_labels[i]), int(audio_labels[j])
            seq = sequence(t, a, b, config)
            rows.append([PAD] * (width - len(seq)) + seq)
            task_ids.append(k)
            answers.append(seq[-2])
            img_idx.append(i)
            aud_idx.append(j)
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return MMExamples(
        as_long(rows), as_long(task_ids), as_long(answers), as_long(img_idx), as_long(aud_idx), images, audio, config
    )


@dataclass
class DigitCorpus:
    """Train / test banks of the three modalities (images and clips disjoint between the splits)."""

    train_images: torch.Tensor  # [N, 8, 8] float32 in [0, 1]
    train_image_labels: np.ndarray
    test_images: torch.Tensor
    test_image_labels: np.ndarray
    train_audio: torch.Tensor  # [N, F_m, M] log-mel, standardised per mel bin with train statistics
    train_audio_labels: np.ndarray
    test_audio: torch.Tensor
    test_audio_labels: np.ndarray
    train_audio_take: np.ndarray  # FSDD take index of each train clip (5..49)
    test_audio_take: np.ndarray  # (0..4)

    def examples(self, split: str, tasks: tuple[str, ...], per_task: int, config: MultimodalConfig, seed: int):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        s = 0 if split == "train" else 1  # distinct streams for the two splits
        return build_examples(
            tasks, per_task,
            getattr(self, f"{split}_image_labels"), getattr(self, f"{split}_audio_labels"),
            getattr(self, f"{split}_images"), getattr(self, f"{split}_audio"), config, seed * 2 + s,
        )  # fmt: skip


def load_digit_corpus(
    config: MultimodalConfig,
    data_dir: str | os.PathLike | None = None,
    test_images: int = 360,
    seed: int = 0,
    takes: int = 50,
) -> DigitCorpus:
    """sklearn digits (a seeded hold-out of ``test_images``) + FSDD (official split; the first ``takes`` takes
    of every digit and speaker, see `load_spoken_digits`), as model inputs."""
    if not 0 < test_images < 1797:
        raise ValueError(f"test_images must be in (0, 1797), got {test_images}")
    images, labels = load_digit_images(data_dir)
    perm = np.random.default_rng(seed).permutation(len(images))
    test, train = perm[:test_images], perm[test_images:]
    pix = torch.from_numpy(images) / 16.0
    speech = load_spoken_digits(data_dir, config.sample_rate, takes)
    feats = clip_features(speech.waves, config)  # [N_clips, F_m, M] (3000 with every take)
    is_test = torch.from_numpy(speech.test)
    mean = feats[~is_test].mean(dim=(0, 1))  # [M]: train statistics only
    std = feats[~is_test].std(dim=(0, 1)).clamp(min=1e-3)
    feats = (feats - mean) / std
    return DigitCorpus(
        pix[train], labels[train], pix[test], labels[test],
        feats[~is_test], speech.labels[~speech.test], feats[is_test], speech.labels[speech.test],
        speech.index[~speech.test], speech.index[speech.test],
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Training objective and evaluation
# ---------------------------------------------------------------------------------------------


def answer_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B] bool: greedy prediction of the answer word (the target before the final <eos>) is right.

    Every sequence ends ``... answer <eos>`` (left padding), so the answer is ``targets[:, -2]``.
    """
    return logits[:, -2].argmax(-1) == targets[:, -2]


class MultimodalObjective:
    """Next-token CE on the text targets (placeholders and padding ignored), for `foresight.lm.train.Trainer`.

    The Trainer hands over window ids; the images, clips and padding mask of those rows come from ``data``.
    ``extra["answer_acc"]``: the batch's greedy answer accuracy (a training curve).
    """

    def __init__(self, data: MMExamples):
        self.data = data

    def __call__(self, model, input_ids, targets, window_ids):
        from foresight.lm.distill import LMLoss, next_token_loss

        images, audio, mask = self.data.media(window_ids)
        dev = input_ids.device
        out = model(
            input_ids,
            None if images is None else images.to(dev),
            None if audio is None else audio.to(dev),
            mask.to(dev),
        )
        ce = next_token_loss(out.logits, targets)
        acc = answer_correct(out.logits.detach(), targets).float().mean()
        return LMLoss(loss=ce, ce=ce.detach(), extra={"answer_acc": acc})

    def __repr__(self) -> str:
        return f"MultimodalObjective({self.data!r})"


@torch.no_grad()
def answer_accuracy(model, data: MMExamples, batch_size: int = 128, device="cpu") -> dict[str, float]:
    """{task: greedy answer accuracy} over every example of ``data`` (tasks absent from it are left out)."""
    model.eval()
    correct = torch.zeros(len(data), dtype=torch.bool)
    for start in range(0, len(data), batch_size):
        ids = np.arange(start, min(start + batch_size, len(data)))
        x, y = data.batch(ids)
        images, audio, mask = data.media(ids)
        out = model(
            x.to(device),
            None if images is None else images.to(device),
            None if audio is None else audio.to(device),
            mask.to(device),
        )
        correct[ids] = answer_correct(out.logits, y.to(device)).cpu()
    return {t: float(correct[data.subset(t)].float().mean()) for t in TASKS if len(data.subset(t))}
