"""Helpers for the LM tests: small random Gemma 2 models and their transformers twins.

A uniquely named module (not conftest) so that `from gemma2_testing import ...` cannot pick up
another test directory's helpers.
"""

from __future__ import annotations

import pytest
import torch

from foresight.lm import Gemma2, Gemma2Config
from foresight.lm.hf_io import config_to_hf_dict, hf_state_dict


def random_gemma2(config: Gemma2Config, std: float = 0.3, seed: int = 0) -> Gemma2:
    """A Gemma2 with weights large enough that logits are spread out but not saturated by the
    soft-cap (std ~ 3 / sqrt(hidden_size)), and non-zero norm scales so (1 + w) is exercised.

    Built on the meta device and filled directly (no default init pass). Tensors above 2^20
    elements cycle a random vector of a prime length (so rows still differ from each other):
    drawing ~750M normals for 2B widths at the real vocab would dominate the test time.
    """
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Gemma2(config)
    model = model.to_empty(device="cpu")
    model.reset_buffers()
    period = 1_048_573  # prime
    table = torch.randn(period) * std
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(std=0.1)
            elif p.numel() > period:
                flat, chunk = p.view(-1), table.roll(int(torch.randint(period, ())))
                for start in range(0, flat.numel(), period):
                    n = min(period, flat.numel() - start)
                    flat[start : start + n] = chunk[:n]
            else:
                p.normal_(std=std)
    return model.eval()


def hf_twin(model: Gemma2):
    """`transformers.Gemma2ForCausalLM` (eager attention) sharing our weights, without copies."""
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.Gemma2Config.from_dict(config_to_hf_dict(model.config))
    hf_config._attn_implementation = "eager"  # the reference path: fp32 softmax, soft-cap applied
    with torch.device("meta"):
        hf = transformers.Gemma2ForCausalLM(hf_config)
    state = hf_state_dict(model)
    if model.config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True, assign=True)
    hf.tie_weights()
    # Non-persistent buffers (rotary inv_freq, embed_scale) were created on meta: rebuild them.
    rotary = hf.model.rotary_emb
    inv_freq, _ = rotary.compute_default_rope_parameters(hf_config)
    rotary.inv_freq = inv_freq
    rotary.original_inv_freq = inv_freq.clone()
    emb = hf.model.embed_tokens
    emb.embed_scale = torch.tensor(emb.scalar_embed_scale)
    return hf.eval()


TRAINING_TEXT = [
    "the quick brown fox jumps over the lazy dog\n",
    "hello world, this is a tiny tokenizer for tests\n",
    "user\nmodel\nGemma two is a language model\n",
    "what is the capital of France? Paris is.\n",
] * 4
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]  # ids 0..5


def make_json_tokenizer(directory, vocab_size: int = 120) -> None:
    """Train a tiny BPE tokenizer and write directory/tokenizer.json.

    Like Gemma's tokenizer.json: spaces become "▁" in the normalizer (no dummy prefix, so the
    text round-trips exactly) and the decoder turns them back.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(TRAINING_TEXT, trainer)
    tok.save(str(directory / "tokenizer.json"))


def make_sentencepiece_tokenizer(directory, vocab_size: int = 80) -> None:
    """Train a tiny sentencepiece BPE model with Gemma's special-token layout: tokenizer.model."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_TEXT),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        hard_vocab_limit=False,
        normalization_rule_name="identity",  # keep "\n" (the chat format needs it)
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        minloglevel=2,
    )
    (directory / "tokenizer.vocab").unlink()
