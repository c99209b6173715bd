import numpy as np
import pytest
import torch

from foresight.lm.niah import (
    ANSWER,
    NEEDLE,
    QUESTION,
    CharVocab,
    ContextStage,
    NeedleObjective,
    NeedleTrainingData,
    NIAHResult,
    answer_exact_match,
    answer_weighted_loss,
    check_schedule,
    cumulative_nll,
    evaluate_niah,
    grid_probes,
    insert_needle,
    longest_recalled,
    make_probe,
    mean_grid,
    plot_nll_by_position,
    plot_recall_grids,
    position_nll,
    probe_overhead,
    shared_prefix_logits,
)

torch.set_num_threads(1)

HAY = "First line. Second one is here. Third!\nFourth sentence ends. Fifth is long and keeps going. " * 40


def test_insert_needle_moves_back_to_the_previous_full_stop():
    hay = "aaaa. bbbb. cccc"
    # depth 50% -> cut at int(16 * 0.5) = 8 ("aaaa. bb|bb"), moved back to just after "aaaa."
    text, start = insert_needle(hay, "<N>", 50.0)
    assert start == 5 and text == "aaaa.<N> bbbb. cccc"
    # exactly at a sentence end: the cut stays there only if the text before it ends with '.'
    text, start = insert_needle(hay, "<N>", 68.75)  # int(16 * 0.6875) = 11, hay[:11] = "aaaa. bbbb."
    assert start == 11 and text == "aaaa. bbbb.<N> cccc"
    # no '.' before the cut -> the very start; depth 100 -> the very end
    assert insert_needle(hay, "<N>", 20.0) == ("<N>aaaa. bbbb. cccc", 0)
    assert insert_needle(hay, "<N>", 0.0) == ("<N>aaaa. bbbb. cccc", 0)
    assert insert_needle(hay, "<N>", 100.0) == ("aaaa. bbbb. cccc<N>", 16)
    with pytest.raises(ValueError, match=r"depth_percent must be in \[0, 100\], got 101"):
        insert_needle(hay, "<N>", 101)


def test_probe_layout_length_and_depth():
    L = 200
    probe = make_probe(HAY, offset=3, length=L, depth=50.0, word="quiet")
    needle = NEEDLE.format(word="quiet")
    assert len(probe.text) == L
    assert probe.text.endswith(QUESTION + "quiet.") and probe.answer == "quiet." == ANSWER.format(word="quiet")
    assert probe.text[probe.needle_start : probe.needle_start + len(needle)] == needle
    H = L - probe_overhead(5)
    hay = HAY[3 : 3 + H]
    # the needle starts a sentence: the haystack before it ends with '.', at the last '.' before depth 50%
    assert probe.text[: probe.needle_start] == hay[: probe.needle_start]
    assert hay[probe.needle_start - 1] == "." and "." not in hay[probe.needle_start : int(H * 0.5)]
    # and the rest of the haystack follows the needle unchanged
    rest = probe.text[probe.needle_start + len(needle) : -len(QUESTION) - len("quiet.")]
    assert rest == hay[probe.needle_start :]
    with pytest.raises(ValueError, match="context length 60 is shorter than the needle, question and answer"):
        make_probe(HAY, 0, 60, 50.0, "quiet")
    with pytest.raises(ValueError, match="word must be non-empty lowercase ascii letters, got 'Quiet'"):
        make_probe(HAY, 0, 200, 50.0, "Quiet")


def test_char_vocab_round_trip_and_unknown_characters():
    vocab = CharVocab.for_corpus("ABC def.")
    assert set("abcdefghijklmnopqrstuvwxyz?\n") <= set(vocab.chars)
    ids = vocab.encode("The secret word is zq.")
    assert ids.dtype == np.int64 and vocab.decode(ids) == "The secret word is zq."
    with pytest.raises(ValueError, match=r"characters \['é'\] are not in the vocabulary"):
        vocab.encode("café")


def test_training_sampler_is_deterministic_per_seed_and_holds_one_probe():
    vocab = CharVocab.for_corpus(HAY)
    a = NeedleTrainingData(HAY, vocab, 128, min_context=90, seed=3)
    b = NeedleTrainingData(HAY, vocab, 128, min_context=90, seed=3)
    c = NeedleTrainingData(HAY, vocab, 128, min_context=90, seed=4)
    x1, y1 = a.batch([5, 0, 77])
    x2, y2 = b.batch([5, 0, 77])
    assert x1.shape == y1.shape == (3, 128) and x1.dtype == torch.long
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the inputs shifted by one
    assert not torch.equal(a.batch([5])[0], c.batch([5])[0])
    lengths = set()
    for i in range(40):
        probe, rest = a.probe(i)
        assert 90 <= len(probe.text) <= 129 and len(probe.text) + len(rest) == 129
        assert vocab.decode(a.window(i)) == probe.text + rest
        assert probe.text.count("The secret word is") == 2  # needle and question, nothing else
        lengths.add(len(probe.text))
    assert len(lengths) > 10  # context lengths vary
    with pytest.raises(ValueError, match=r"min_context=20 must be in \[77"):
        NeedleTrainingData(HAY, vocab, 128, min_context=20)


def test_exact_match_scores_every_answer_position():
    V = 5
    ids = torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])  # the answer = last 2 tokens: 3, 4
    logits = torch.zeros(3, 3, V)  # logits for the last 3 positions (2, 3, 4)
    logits[:, 0, 3] = 1.0  # position 2 predicts 3
    logits[:, 1, 4] = 1.0  # position 3 predicts 4
    logits[1, 1, 4], logits[1, 1, 0] = 0.0, 1.0  # row 1: second answer token wrong
    logits[2, 0, 3], logits[2, 0, 1] = 0.0, 1.0  # row 2: first answer token wrong
    logits[:, 2, 2] = 9.0  # the prediction after the answer does not count
    assert answer_exact_match(logits, ids, 2).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="need logits for the last 3 positions, got 2"):
        answer_exact_match(logits[:, 1:], ids, 2)


class _Oracle(torch.nn.Module):
    """Reads the needle from the context: the word after the FIRST "secret word is " (a perfect retriever),
    optionally failing when the needle starts after fail_after % of the haystack."""

    def __init__(self, vocab: CharVocab, fail_after: float | None = None):
        super().__init__()
        self.vocab, self.fail_after = vocab, fail_after

    def forward(self, ids, logits_to_keep=0):
        B, T = ids.shape
        logits = torch.zeros(B, T, len(self.vocab))
        for b in range(B):
            text = self.vocab.decode(ids[b])
            key = "secret word is "
            start = text.index(key) + len(key)
            word = text[start : text.index(".", start) + 1]
            haystack = T - probe_overhead(len(word) - 1)
            needle_start = start - len(NEEDLE[:-1].format(word=""))
            late = self.fail_after is not None and needle_start >= self.fail_after * haystack / 100
            for t, c in enumerate(word):
                logits[b, T - len(word) - 1 + t, self.vocab.encode("x" if late else c)[0]] = 1.0
        return type("Out", (), {"logits": logits[:, -logits_to_keep:] if logits_to_keep else logits})


def test_evaluator_grid_with_a_perfect_and_a_partial_retriever():
    vocab = CharVocab.for_corpus(HAY)
    kw = dict(lengths=(100, 200), depths=(0.0, 50.0, 100.0), needles=3, batch_size=4)
    perfect = evaluate_niah(_Oracle(vocab), HAY, vocab, **kw)
    assert perfect.recall.shape == (2, 3) and perfect.recall.min() == 1.0 and perfect.mean() == 1.0
    partial = evaluate_niah(_Oracle(vocab, fail_after=75.0), HAY, vocab, **kw)
    # only the needles at depth 100 start after 75% of the haystack
    assert partial.recall[:, 2].tolist() == [0.0, 0.0] and partial.recall[:, :2].min() == 1.0
    assert partial.mean(max_length=100) == pytest.approx(2 / 3) and partial.min() == 0.0
    assert partial.to_dict()["lengths"] == [100, 200]
    # the probes depend on the seed only, not on the batch size
    again = evaluate_niah(_Oracle(vocab, fail_after=75.0), HAY, vocab, **{**kw, "batch_size": 7})
    np.testing.assert_array_equal(again.recall, partial.recall)
    with pytest.raises(ValueError, match="needles must be >= 1, got 0"):
        evaluate_niah(_Oracle(vocab), HAY, vocab, **{**kw, "needles": 0})


def test_answer_mask_marks_exactly_the_answer_targets():
    vocab = CharVocab.for_corpus(HAY)
    data = NeedleTrainingData(HAY, vocab, 128, min_context=90, seed=1)
    ids = list(range(12))
    _, targets = data.batch(ids)
    mask = data.answer_mask(ids)
    assert mask.shape == (12, 128) and mask.dtype == torch.bool
    for b, i in enumerate(ids):
        probe, _ = data.probe(i)
        assert mask[b].sum() == len(probe.answer) == 6
        assert vocab.decode(targets[b][mask[b]]) == probe.answer  # the word and its full stop
        # the answer's first target follows the question, i.e. the model sees the whole question
        first = int(mask[b].nonzero()[0])
        assert vocab.decode(targets[b][first - len(QUESTION) : first]) == QUESTION


def test_answer_weighted_loss_adds_the_weighted_answer_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    targets = torch.tensor([[0, 1, 2, 3], [4, 3, 2, 1]])
    mask = torch.tensor([[False, False, True, True], [False, True, False, False]])
    per = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(2, 4)
    loss, ce, answer_ce = answer_weighted_loss(logits, targets, mask, 2.5)
    assert ce == pytest.approx(float(per.mean()))
    assert answer_ce == pytest.approx(float((per[0, 2] + per[0, 3] + per[1, 1]) / 3))
    assert loss == pytest.approx(float(ce + 2.5 * answer_ce))
    zero, ce0, _ = answer_weighted_loss(logits, targets, mask, 0.0)  # weight 0: plain next-token CE
    assert zero == ce0 == pytest.approx(float(per.mean()))
    _, _, none = answer_weighted_loss(logits, targets, torch.zeros_like(mask), 1.0)
    assert none == 0.0
    with pytest.raises(ValueError, match="answer_weight must be >= 0, got -1"):
        answer_weighted_loss(logits, targets, mask, -1.0)
    with pytest.raises(ValueError, match=r"answer_mask \[2, 3\] disagree"):
        answer_weighted_loss(logits, targets, mask[:, :3], 1.0)


def test_needle_objective_is_the_same_answer_weighted_loss_for_dense_and_moe_plus_the_moe_terms():
    from foresight.lm.gemma2 import Gemma2, Gemma2Config
    from foresight.lm.moe_lm import MoELM, MoELMConfig
    from foresight.nn.moe import MoEConfig

    vocab = CharVocab.for_corpus(HAY)
    data = NeedleTrainingData(HAY, vocab, 96, min_context=probe_overhead(5) + 8, seed=0)
    base = Gemma2Config.tiny(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_layers=2)
    torch.manual_seed(0)
    dense, moe = Gemma2(base), MoELM(MoELMConfig(base=base, moe=MoEConfig(num_experts=4, top_k=2)))
    ids = [3, 1, 4]
    x, y = data.batch(ids)
    mask = data.answer_mask(ids)
    objective = NeedleObjective(data, answer_weight=2.0)
    with torch.no_grad():
        want, ce, answer_ce = answer_weighted_loss(dense(x).logits, y, mask, 2.0)
        out = objective(dense, x, y, ids)
        assert torch.allclose(out.loss, want) and torch.allclose(out.ce, ce)
        assert set(out.extra) == {"answer_ce"} and torch.allclose(out.extra["answer_ce"], answer_ce)
        assert float(answer_ce) != pytest.approx(float(ce))  # the answer term is not the plain CE again
        routed = moe(x)
        want, _, _ = answer_weighted_loss(routed.logits, y, mask, 2.0)
        out = objective(moe, x, y, ids)
        assert float(routed.moe_loss) > 0 and torch.allclose(out.loss, want + routed.moe_loss)
        assert {"aux_loss", "z_loss", "moe_loss", "expert_fraction_min", "dropped_fraction"} <= set(out.extra)
    with pytest.raises(ValueError, match="answer_weight must be >= 0, got -0.5"):
        NeedleObjective(data, -0.5)


def test_niah_result_cells_and_round_trip():
    grid = NIAHResult((64, 128, 256), (0.0, 100.0), np.array([[1.0, 0.9], [0.8, 1.0], [0.0, 0.1]]), needles=10)
    assert grid.cells(128) == [1.0, 0.9, 0.8, 1.0]  # the lengths within 128, row-major
    assert grid.cells() == [1.0, 0.9, 0.8, 1.0, 0.0, 0.1]
    assert grid.mean(128) == pytest.approx(0.925) and grid.min(128) == 0.8 and grid.min() == 0.0
    assert grid.cells(32) == [] and np.isnan(grid.mean(32)) and np.isnan(grid.min(32))
    back = NIAHResult.from_dict(grid.to_dict())
    assert (back.lengths, back.depths, back.needles) == (grid.lengths, grid.depths, 10)
    np.testing.assert_array_equal(back.recall, grid.recall)


def test_plot_recall_grids_writes_one_png(tmp_path):
    grid = NIAHResult((64, 128), (0.0, 50.0, 100.0), np.array([[1.0, 0.5, 0.0], [1.0, 1.0, 0.9]]), needles=2)
    path = tmp_path / "recall.png"
    plot_recall_grids(path, {"MoE": grid, "dense": grid}, trained_length=64)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="grids is empty"):
        plot_recall_grids(tmp_path / "none.png", {})


def _char_models(vocab):
    """A dense Gemma 2 and an MoE twin over the character vocabulary, window 16 (< the chunks below)."""
    from foresight.lm.gemma2 import Gemma2, Gemma2Config
    from foresight.lm.moe_lm import MoELM, MoELMConfig
    from foresight.nn.moe import MoEConfig

    base = Gemma2Config.tiny(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_layers=2, sliding_window=16
    )
    torch.manual_seed(0)
    return Gemma2(base).eval(), MoELM(MoELMConfig(base=base, moe=MoEConfig(num_experts=4, top_k=2))).eval()


def test_evaluator_and_position_nll_give_the_same_numbers_in_chunks():
    vocab = CharVocab.for_corpus(HAY)
    kw = dict(lengths=(150, 300), depths=(0.0, 100.0), needles=2, batch_size=4)
    ids = torch.from_numpy(vocab.encode(HAY[:301]))[None].repeat(2, 1)  # [2, 301]
    for model in _char_models(vocab):
        one_shot = evaluate_niah(model, HAY, vocab, **kw)  # every probe fits the default chunk
        chunked = evaluate_niah(model, HAY, vocab, prefill_chunk=37, **kw)  # 37 tokens per forward
        np.testing.assert_array_equal(chunked.recall, one_shot.recall)
        with torch.no_grad():
            logits = model(ids).logits  # [2, 301, V]
        want = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        for chunk in (64, 300, 1000):  # chunks that cut the stream, end one short of it, hold all of it
            got = position_nll(model, ids, chunk_size=chunk)
            assert got.shape == (2, 300)
            assert (got - want.view(2, 300)).abs().max() <= 1e-4, type(model).__name__
    with pytest.raises(ValueError, match="need at least 2 tokens to score a next token, got 1"):
        position_nll(model, ids[:, :1])


def test_grid_probes_share_each_haystack_across_depths_with_a_fresh_word_per_depth():
    depths = (0.0, 30.0, 70.0, 100.0)
    grid = grid_probes(HAY, 300, depths, needles=3, word_len=5, seed=7)
    assert len(grid) == 3 and all(len(row) == len(depths) for row in grid)
    for row in grid:
        assert all(len(p.text) == 300 for p in row)
        starts = [p.needle_start for p in row]
        assert starts == sorted(starts) and starts[0] == 0 and starts[-1] == 300 - probe_overhead(5)
        longest = row[-1].text[: row[-1].needle_start]  # the whole haystack (depth 100)
        assert all(p.text[: p.needle_start] == longest[: p.needle_start] for p in row)
        assert len({p.word for p in row}) > 1  # the needle varies per query
    assert grid_probes(HAY, 300, depths, 3, 5, seed=7) == grid  # deterministic by seed
    assert grid_probes(HAY, 300, depths, 3, 5, seed=8) != grid


def test_shared_prefix_cache_gives_the_logits_and_answers_of_prefilling_every_probe():
    vocab = CharVocab.for_corpus(HAY)
    probes = grid_probes(HAY, 300, (0.0, 25.0, 60.0, 100.0), needles=1, word_len=5, seed=3)[0]
    for model in _char_models(vocab):
        shared = shared_prefix_logits(model, probes, vocab, logits_to_keep=7, chunk_size=37)
        for p, got in zip(probes, shared, strict=True):
            ids = torch.from_numpy(vocab.encode(p.text))[None]
            with torch.no_grad():
                want = model(ids).logits[:, -7:]  # one forward of the whole probe
            assert got.shape == want.shape and (got - want).abs().max() <= 1e-4, type(model).__name__
        kw = dict(lengths=(150, 300), depths=(0.0, 50.0, 100.0), needles=2, prefill_chunk=37)
        a = evaluate_niah(model, HAY, vocab, share_prefix=True, **kw)
        b = evaluate_niah(model, HAY, vocab, share_prefix=False, **kw)
        np.testing.assert_array_equal(a.recall, b.recall)
    other = grid_probes(HAY, 300, (50.0,), needles=2, word_len=5, seed=3)
    with pytest.raises(ValueError, match="do not share one haystack"):
        shared_prefix_logits(model, [other[0][0], other[1][0]], vocab, logits_to_keep=7)


def test_longest_recalled_and_mean_grid():
    g = NIAHResult((128, 256, 512, 1024), (0.0, 100.0), np.array([[1, 1], [1, 0.99], [1, 0.5], [1, 1.0]]), 2)
    assert longest_recalled(g, 0.99) == 256  # 512 misses a cell; 1024 passes but lies beyond the gap
    assert longest_recalled(g, 0.4) == 1024
    bad = NIAHResult((128, 256), (0.0, 100.0), np.array([[0.98, 1.0], [1.0, 1.0]]), 2)
    assert longest_recalled(bad, 0.99) == 0  # the shortest length already misses the bar
    m = mean_grid([g, NIAHResult(g.lengths, g.depths, np.zeros((4, 2)), 3)])
    assert m.needles == 5 and m.recall[0].tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="grids differ"):
        mean_grid([g, bad])
    with pytest.raises(ValueError, match="grids is empty"):
        mean_grid([])


def test_cumulative_nll_and_its_figure(tmp_path):
    nll = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0]])  # mean over streams: 2, 1, 1
    np.testing.assert_allclose(cumulative_nll(nll), [2.0, 1.5, 4 / 3])
    with pytest.raises(ValueError, match=r"nll must be \[streams, positions\]"):
        cumulative_nll(np.zeros(3))
    path = tmp_path / "nll.png"
    plot_nll_by_position(path, {"MoE": cumulative_nll(nll), "dense": np.ones(3)}, trained_length=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="curves is empty"):
        plot_nll_by_position(tmp_path / "none.png", {})


def test_context_schedule_validation():
    with pytest.raises(ValueError, match="ContextStage.seq_len must be >= 1, got 0"):
        ContextStage(0, 10, 4)
    with pytest.raises(ValueError, match="ContextStage.rope_base must be > 0"):
        ContextStage(128, 10, 4, rope_base=0.0)
    check_schedule([ContextStage(128, 10, 4), ContextStage(512, 5, 1, rope_base=1e5)])
    with pytest.raises(ValueError, match="shortens the context or lowers the RoPE base"):
        check_schedule([ContextStage(512, 10, 4), ContextStage(128, 5, 1)])
    with pytest.raises(ValueError, match="shortens the context or lowers the RoPE base"):
        check_schedule([ContextStage(128, 10, 4, rope_base=1e5), ContextStage(512, 5, 1)])
    with pytest.raises(ValueError, match="needs at least one ContextStage"):
        check_schedule([])
