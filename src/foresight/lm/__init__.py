"""Language models: Gemma 2 (model, presets, HF checkpoint I/O, tokenizer, KV cache, generation), the
sparse-MoE LM built on it (Gemini 1.5 system) and a char-level needle-in-a-haystack evaluation.

Example (random weights; `load_pretrained(dir)` reads an HF checkpoint instead)::

    import torch
    from foresight.lm import Gemma2, Gemma2Config, Gemma2Tokenizer, generate, save_pretrained

    model = Gemma2(Gemma2Config.tiny()).eval()
    prompt = torch.tensor([[2, 17, 99]])                          # [B, T] token ids, <bos> first
    logits = model(prompt).logits                                 # [1, 3, 256], soft-capped fp32
    tokens = generate(model, prompt, max_new_tokens=8)            # [1, 11], greedy
    save_pretrained(model, "runs/gemma2-tiny")                    # loads in transformers too

    tok = Gemma2Tokenizer.from_dataset()                          # the real Gemma 2 tokenizer
    batch = tok.encode_batch(["Hello", "a longer prompt"])        # input_ids + attention_mask, left-padded
"""

from foresight.lm.cache import Gemma2Cache
from foresight.lm.completion import Completion
from foresight.lm.gemma2 import Gemma2, Gemma2Config, Gemma2Output, alternating_layer_types
from foresight.lm.generate import complete, generate, generate_stream
from foresight.lm.hf_io import load_pretrained, save_pretrained
from foresight.lm.moe_lm import MoELM, MoELMConfig, MoELMOutput, MoENextTokenObjective
from foresight.lm.multimodal import MultimodalConfig, MultimodalDecoder, MultimodalOutput
from foresight.lm.niah import CharVocab, NeedleTrainingData, NIAHResult, evaluate_niah
from foresight.lm.sampling import GenerationConfig
from foresight.lm.speculative import Drafter
from foresight.lm.tokenizer import Gemma2Tokenizer

__all__ = [
    "Completion",
    "Drafter",
    "Gemma2",
    "Gemma2Cache",
    "Gemma2Config",
    "Gemma2Output",
    "Gemma2Tokenizer",
    "MoELM",
    "MoELMConfig",
    "MoELMOutput",
    "MoENextTokenObjective",
    "MultimodalConfig",
    "MultimodalDecoder",
    "MultimodalOutput",
    "CharVocab",
    "NeedleTrainingData",
    "NIAHResult",
    "evaluate_niah",
    "alternating_layer_types",
    "GenerationConfig",
    "complete",
    "generate",
    "generate_stream",
    "load_pretrained",
    "save_pretrained",
]
