"""mm_data: log-mel front end vs numpy, WAV reading, pinned-data checks, splits and the interleaved corpus.

Tests that read data need sklearn-digits/ and fsdd/ under $FORESIGHT_DATA or the repository's sibling
../shared/data; without them they are skipped with the reason.
"""

import gzip
import math
import shutil
import wave

import numpy as np
import pytest
import torch

from digits_data import digits_data_root
from foresight.core.data import DataNotFoundError
from foresight.lm.distill import IGNORE_INDEX
from foresight.lm.gemma2 import Gemma2Config
from foresight.lm.mm_data import (
    AUDIO_ID,
    EOS,
    FSDD_NAMES,
    IMAGE_ID,
    NUMBER_WORDS,
    TASKS,
    TOKEN_ID,
    TOKENS,
    build_examples,
    fsdd_folder,
    load_digit_corpus,
    load_digit_images,
    load_spoken_digits,
    log_mel,
    mel_filterbank,
    read_wav,
    sequence,
)
from foresight.lm.multimodal import MultimodalConfig

torch.set_num_threads(1)


_data_root = digits_data_root


def _cfg() -> MultimodalConfig:
    return MultimodalConfig(Gemma2Config.tiny(vocab_size=len(TOKENS)), image_token_id=IMAGE_ID, audio_token_id=AUDIO_ID)


# --- log-mel front end -------------------------------------------------------------------------


def _np_filterbank(n_mels, n_fft, sr):
    """HTK triangles computed bin by bin from the textbook definition."""
    mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    inv = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = [inv(mel(0.0) + i * (mel(sr / 2) - mel(0.0)) / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for k in range(n_fft // 2 + 1):
        f = k * sr / n_fft
        for m in range(n_mels):
            lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
            if lo <= f <= mid:
                fb[k, m] = (f - lo) / (mid - lo)
            elif mid < f <= hi:
                fb[k, m] = (hi - f) / (hi - mid)
    return fb


def test_mel_filterbank_matches_a_hand_computation():
    fb = mel_filterbank(40, 400, 16000).numpy()
    ref = _np_filterbank(40, 400, 16000)
    assert fb.shape == (201, 40)
    np.testing.assert_allclose(fb, ref, atol=1e-6)
    assert fb.max() <= 1.0 and (fb.sum(0) > 0).all()  # every filter covers at least one bin
    with pytest.raises(ValueError, match="f_max=9000"):
        mel_filterbank(40, 400, 16000, f_max=9000)


def test_log_mel_matches_numpy_framing_and_fft():
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    x = (np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(4000)).astype(np.float32)
    got = log_mel(torch.from_numpy(x)[None], 16000, n_mels=40)[0].numpy()  # [frames, 40]
    n_fft, hop = 400, 160
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([padded[i * hop : i * hop + n_fft] * win for i in range(1 + len(x) // hop)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    ref = np.log(power @ _np_filterbank(40, n_fft, 16000) + 1e-6)
    assert got.shape == ref.shape == (26, 40)
    np.testing.assert_allclose(got, ref, atol=2e-3, rtol=1e-3)
    # the 440 Hz tone dominates the filter around it
    assert got.mean(0).argmax() == np.abs(_np_filterbank(40, n_fft, 16000)[round(440 * n_fft / 16000)]).argmax()


def test_read_wav_with_the_stdlib(tmp_path):
    path = tmp_path / "a.wav"
    samples = np.array([0, 16384, -32768, 32767], dtype="<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(samples.tobytes())
    x, rate = read_wav(path)
    assert rate == 8000 and x.tolist() == [0.0, 0.5, -1.0, 32767 / 32768]


# --- pinned data ---------------------------------------------------------------------------------


def test_manifest_refuses_a_modified_recording(tmp_path):
    root = _data_root()
    shutil.copytree(root / "fsdd" / "recordings", tmp_path / "fsdd" / "recordings")
    assert fsdd_folder(tmp_path) == tmp_path / "fsdd"
    victim = tmp_path / "fsdd" / "recordings" / "3_theo_7.wav"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fails the manifest check"):
        fsdd_folder(tmp_path)


def test_digits_sha_refuses_a_modified_file(tmp_path):
    root = _data_root()
    (tmp_path / "sklearn-digits").mkdir()
    rows = gzip.decompress((root / "sklearn-digits" / "digits.csv.gz").read_bytes()).replace(b"0.0,", b"1.0,", 1)
    (tmp_path / "sklearn-digits" / "digits.csv.gz").write_bytes(gzip.compress(rows))
    with pytest.raises(ValueError, match="has sha256 .* expected 09f66e6d"):
        load_digit_images(tmp_path)


def test_offline_without_data_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("FORESIGHT_OFFLINE", "1")
    monkeypatch.delenv("FORESIGHT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match="dataset 'fsdd' not found .*--data-dir"):
        fsdd_folder(tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="sklearn-digits"):
        load_digit_images(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def corpus():
    return load_digit_corpus(_cfg(), _data_root(), test_images=360, seed=0)


def test_official_fsdd_split_and_held_out_images(corpus):
    assert len(corpus.train_audio) == 2700 and len(corpus.test_audio) == 300
    assert corpus.train_audio_take.min() >= 5 and corpus.test_audio_take.max() <= 4  # no test take in train
    assert len(corpus.train_images) == 1437 and len(corpus.test_images) == 360
    assert corpus.train_audio.shape[1:] == (100, 40) and torch.isfinite(corpus.train_audio).all()
    # standardised with train statistics only
    torch.testing.assert_close(corpus.train_audio.mean(dim=(0, 1)), torch.zeros(40), atol=1e-3, rtol=0)
    images, _ = load_digit_images(_data_root())
    perm = np.random.default_rng(0).permutation(1797)
    torch.testing.assert_close(corpus.test_images, torch.from_numpy(images[perm[:360]]) / 16)
    other = load_digit_corpus(_cfg(), _data_root(), test_images=360, seed=1)
    assert not torch.equal(other.test_images, corpus.test_images)  # the image hold-out follows the seed


def test_examples_are_correct_and_deterministic_per_seed(corpus):
    cfg = _cfg()
    ex = corpus.examples("train", TASKS, 20, cfg, seed=3)
    again = corpus.examples("train", TASKS, 20, cfg, seed=3)
    assert torch.equal(ex.tokens, again.tokens) and torch.equal(ex.image_index, again.image_index)
    assert not torch.equal(ex.tokens, corpus.examples("train", TASKS, 20, cfg, seed=4).tokens)
    assert ex.seq_len == len(sequence("composite", 0, 0, cfg)) - 1
    words = {TOKEN_ID[w]: n for n, w in enumerate(NUMBER_WORDS)}
    for r in range(len(ex)):
        task = TASKS[int(ex.task[r])]
        row = ex.tokens[r].tolist()
        assert row[-1] == EOS and row[-2] == int(ex.answer[r])
        i, j = int(ex.image_index[r]), int(ex.audio_index[r])
        if task == "image":
            expect = corpus.train_image_labels[i]
        elif task == "audio":
            expect = corpus.train_audio_labels[j]
        elif task == "text":
            expect = words[row[-6]] + words[row[-4]]
        else:
            expect = corpus.train_image_labels[i] + corpus.train_audio_labels[j]
        assert words[row[-2]] == expect
        assert row.count(IMAGE_ID) == (16 if task in ("image", "composite") else 0)
        assert row.count(AUDIO_ID) == (20 if task in ("audio", "composite") else 0)
    ids = np.array([0, 25, 45, 65])  # one of each task
    x, y = ex.batch(ids)
    images, audio, mask = ex.media(ids)
    assert (x == IMAGE_ID).sum() == images.shape[0] * 16 and (x == AUDIO_ID).sum() == audio.shape[0] * 20
    assert (y[(x.roll(-1, 1) == IMAGE_ID) | (x.roll(-1, 1) == AUDIO_ID)][:-1] == IGNORE_INDEX).all()
    assert not ((y == IMAGE_ID) | (y == AUDIO_ID)).any() and mask.shape == x.shape
    with pytest.raises(ValueError, match="unknown task 'video'"):
        build_examples(("video",), 1, np.zeros(1), np.zeros(1), corpus.train_images, corpus.train_audio, cfg, 0)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        corpus.examples("val", TASKS, 1, cfg, 0)


def test_spoken_digits_keep_the_first_takes_of_every_digit_and_speaker():
    from scipy.signal import resample_poly

    speech = load_spoken_digits(_data_root(), 16000, takes=7)
    assert len(speech.waves) == 10 * 6 * 7 and sorted(set(speech.index.tolist())) == list(range(7))
    assert speech.test.sum() == 300 and len(set(speech.speakers.tolist())) == 6  # every official test take kept
    first = FSDD_NAMES[0]  # 0_george_0.wav
    assert (speech.labels[0], speech.speakers[0], speech.index[0]) == (0, "george", 0)
    x, _ = read_wav(fsdd_folder(_data_root()) / "recordings" / first)
    np.testing.assert_array_equal(speech.waves[0], resample_poly(x, 2, 1).astype(np.float32))
    for bad in (5, 51, 7.0):
        with pytest.raises(ValueError, match=r"takes must be an int in \(5, 50\]"):
            load_spoken_digits(_data_root(), 16000, takes=bad)
