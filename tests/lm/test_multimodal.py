import pytest
import torch

from foresight.lm.distill import IGNORE_INDEX
from foresight.lm.gemma2 import Gemma2, Gemma2Config
from foresight.lm.multimodal import (
    MediaSpanMask,
    MultimodalConfig,
    MultimodalDecoder,
    media_spans,
    multimodal_targets,
    patchify,
)

torch.set_num_threads(1)

IMG, AUD, PAD, BOS = 4, 5, 0, 2


def _cfg(**kw) -> MultimodalConfig:
    # 4x4 images of 2x2 patches -> 4 image tokens; 0.2 s clips at 20 tokens/s -> 4 audio tokens (20 mel frames)
    text = Gemma2Config.tiny(vocab_size=32, sliding_window=6, num_layers=2)
    base = dict(
        text=text,
        image_token_id=IMG,
        audio_token_id=AUD,
        image_size=4,
        patch_size=2,
        n_mels=8,
        clip_seconds=0.2,
        audio_frames_per_second=20,
        audio_hidden=8,
    )
    base.update(kw)
    return MultimodalConfig(**base)


def _model(**kw) -> MultimodalDecoder:
    torch.manual_seed(0)
    return MultimodalDecoder(_cfg(**kw)).eval()


def _seq():
    # <bos> w <image>x4 w <audio>x4 w w : one image, one clip, text around them
    return torch.tensor([[BOS, 9, IMG, IMG, IMG, IMG, 10, AUD, AUD, AUD, AUD, 11, 12]])


def _media(n_img=1, n_aud=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_img, 4, 4, generator=g), torch.randn(n_aud, 20, 8, generator=g)


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="image_token_id 99 is outside the vocabulary"):
        _cfg(image_token_id=99)
    with pytest.raises(ValueError, match="must differ"):
        _cfg(audio_token_id=IMG)
    with pytest.raises(ValueError, match="clash"):
        _cfg(image_token_id=PAD)
    with pytest.raises(ValueError, match="patch_size 3 must divide image_size 4"):
        _cfg(patch_size=3)
    with pytest.raises(ValueError, match="audio_frames_per_second 30 must divide"):
        _cfg(audio_frames_per_second=30)
    with pytest.raises(ValueError, match="prefix_attention 'full'"):
        _cfg(prefix_attention="full")
    cfg = _cfg()
    assert (cfg.tokens_per_image, cfg.audio_tokens, cfg.mel_frames, cfg.pool, cfg.sample_rate) == (4, 4, 20, 5, 16000)
    with pytest.raises(ValueError, match="needs the 'eager' backend"):
        MultimodalDecoder(_cfg(prefix_attention="bidirectional"), attn_backend="flex")


def test_patchify_is_row_major_over_patches():
    img = torch.arange(16.0).view(1, 4, 4)
    p = patchify(img, 2)
    assert p.shape == (1, 4, 4)
    assert p[0, 0].tolist() == [0, 1, 4, 5] and p[0, 1].tolist() == [2, 3, 6, 7]
    assert p[0, 3].tolist() == [10, 11, 14, 15]


def test_r1_count_mismatch_names_both_numbers():
    m = _model()
    images, audio = _media(n_img=2)
    with pytest.raises(ValueError, match=r"4 <image> placeholder tokens but 8 encoded image vectors"):
        m(_seq(), images, audio)
    with pytest.raises(ValueError, match=r"4 <audio> placeholder tokens but 0 encoded audio vectors"):
        m(_seq(), images[:1], None)


def test_features_replace_placeholders_in_order_and_r4_normalizer_is_cancelled():
    m = _model()
    images, audio = _media(n_img=2, n_aud=1)
    ids = torch.tensor([[BOS, IMG, IMG, IMG, IMG, AUD, AUD, AUD, AUD, IMG, IMG, IMG, IMG]])
    out = m(ids, images, audio, output_hidden_states=True)
    h0 = out.hidden_states[0][0]  # the scaled embeddings the first block reads
    img_feats = m.image_encoder(images)  # [2, 4, D]
    aud_feats = m.audio_encoder(audio)  # [1, 4, D]
    # R4 (docs/gemini1_multimodal.md): after Gemma's x * normalizer the features are at exactly the encoder's scale
    torch.testing.assert_close(h0[1:5], img_feats[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h0[5:9], aud_feats[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h0[9:13], img_feats[1], rtol=1e-6, atol=1e-6)
    # text tokens keep Gemma's scaled embedding
    torch.testing.assert_close(h0[0], m.embed.weight[BOS] * m.normalizer(torch.float32))
    assert m.normalizer(torch.float32) == pytest.approx(8.0)  # sqrt(64): a factor the features would get otherwise


def test_r2_rope_counts_every_token_including_placeholders():
    m = _model()
    images, audio = _media()
    ids = _seq()
    T = ids.shape[1]
    seen = {}
    orig = m.rope.forward

    def spy(positions):
        seen["p"] = positions.clone()
        return orig(positions)

    m.rope.forward = spy
    m(ids, images, audio)
    assert seen["p"].tolist() == [list(range(T))]


@pytest.mark.parametrize("prefix", ["causal", "bidirectional"])
def test_r3_left_padding_no_nan_and_batched_equals_unbatched(prefix):
    m = _model(prefix_attention=prefix)
    img_a, aud_a = _media(seed=1)
    img_b, _ = _media(seed=2)
    a = _seq()[0]
    b = torch.tensor([BOS, 13, IMG, IMG, IMG, IMG, 14])  # image only, shorter
    pad = len(a) - len(b)
    batch = torch.stack([a, torch.cat([torch.full((pad,), PAD), b])])
    mask = (torch.arange(len(a)) >= torch.tensor([[0], [pad]])).long()
    out = m(batch, torch.cat([img_a, img_b]), aud_a, attention_mask=mask).logits
    assert torch.isfinite(out).all()
    solo_a = m(a[None], img_a, aud_a).logits
    solo_b = m(b[None], img_b, None).logits
    torch.testing.assert_close(out[0], solo_a[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1, pad:], solo_b[0], rtol=1e-5, atol=1e-5)


def test_r5_targets_ignore_placeholders_and_padding():
    cfg = _cfg()
    ids = torch.tensor([[PAD, PAD, BOS, IMG, IMG, IMG, IMG, 9, AUD, AUD, AUD, AUD, 10, 1]])
    x, y = multimodal_targets(ids, cfg, ids != PAD)
    assert x.tolist() == [ids[0, :-1].tolist()]
    expect = [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 9]
    expect += [IGNORE_INDEX] * 4 + [10, 1]
    # <bos> is the target of a padding input: not a prediction from real context, ignored too
    assert y.tolist() == [expect]


def test_media_spans_split_adjacent_items():
    cfg = _cfg()
    ids = torch.tensor([[BOS, IMG, IMG, IMG, IMG, IMG, IMG, IMG, IMG, AUD, AUD, AUD, AUD, 9]])
    assert media_spans(ids, cfg).tolist() == [[-1, 0, 0, 0, 0, 2, 2, 2, 2, 1, 1, 1, 1, -1]]


def _explicit_mask(ids, valid, window, spans, bidirectional):
    """The 0/1 visibility matrix written out element by element."""
    B, T = ids.shape
    out = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(T):
                causal = j <= i and (window is None or j > i - window)
                same = bidirectional and spans[b][i] >= 0 and spans[b][i] == spans[b][j]
                out[b, i, j] = bool(valid[b, j]) and (causal or same)
    return out


@pytest.mark.parametrize("prefix", ["causal", "bidirectional"])
def test_prefix_attention_matches_an_explicit_mask(prefix):
    m = _model(prefix_attention=prefix)
    ids = torch.cat([torch.full((1, 2), PAD), _seq()], dim=1)
    valid = ids != PAD
    valid[0, 2:] = True
    captured = []

    def hook(module, args):
        captured.append(args[3])  # the AttentionMask each block receives

    for block in m.layers:
        block.attn.register_forward_pre_hook(hook)
    images, audio = _media()
    m(ids, images, audio, attention_mask=valid.long())
    spans = [[-1, -1, -1, -1, 0, 0, 0, 0, -1, 1, 1, 1, 1, -1, -1]]
    assert len(captured) == len(m.layers)
    for mask in captured:
        window = mask.window
        expect = _explicit_mask(ids, valid, window, spans, prefix == "bidirectional")
        assert torch.equal(mask.dense().expand_as(expect), expect)
        assert isinstance(mask, MediaSpanMask) == (prefix == "bidirectional")
    assert {mk.window for mk in captured} == {None, 6}  # both the sliding and the global layer were checked

    # and the mask matters: an image token's output depends on a LATER token of its image only if bidirectional
    images2 = images.clone()
    images2[0, 3, 3] += 1.0  # the last patch (token 7)
    a = m(ids, images, audio, attention_mask=valid.long()).logits
    b = m(ids, images2, audio, attention_mask=valid.long()).logits
    changed = not torch.allclose(a[0, 4], b[0, 4])
    assert changed == (prefix == "bidirectional")


def test_gradients_reach_both_encoders_and_base_gemma_is_unchanged_without_media():
    m = _model()
    images, audio = _media()
    m(_seq(), images, audio).logits.sum().backward()
    assert m.image_encoder.proj.weight.grad.abs().sum() > 0
    assert m.audio_encoder.conv.weight.grad.abs().sum() > 0
    # text only: the decoder computes exactly what Gemma2 with the same weights does
    g = Gemma2(m.config).eval()
    g.load_state_dict({k: v for k, v in m.state_dict().items() if "encoder" not in k})
    ids = torch.tensor([[BOS, 9, 10, 11]])
    torch.testing.assert_close(m(ids).logits, g(ids).logits)
