"""Layout math of trl_ipo.packed (layout and masks): index maps, positions and masks, checked against the padded layout's forward."""

import pytest
import torch

from trl_ipo.packed import (
    CHOSEN,
    REJECTED,
    SHARED,
    additive_mask,
    allowed_mask,
    build_layout,
    mask_mod,
    scatter_scored,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD_ID = 0


def collate(pairs, max_length=None, keep_end=False):
    """TRL's padded layout from (prompt, chosen, rejected) id lists: chosen rows, then rejected rows."""
    rows, masks = [], []
    for part in (1, 2):
        for pair in pairs:
            ids, comp = pair[0] + pair[part], [0] * len(pair[0]) + [1] * len(pair[part])
            if max_length is not None:
                cut = slice(-max_length, None) if keep_end else slice(None, max_length)
                ids, comp = ids[cut], comp[cut]
            rows.append(ids)
            masks.append(comp)
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    completion = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    return input_ids, attention, completion


PAIRS = [
    ([5, 6, 7], [8, 9], [10]),
    ([11, 12], [13], [14, 15, 16, 17]),
    ([18, 19, 20, 21, 22], [23, 24, 25], [26, 27]),
]


def test_shared_pair_layout_positions_branches_and_predicting_states():
    batch = collate(PAIRS[:1])
    layout = build_layout(*batch, prefix_sharing=True, padding_free=False)
    assert layout.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]  # the rejected branch restarts after the prompt
    assert layout.branch_ids.tolist() == [[SHARED] * 3 + [CHOSEN] * 2 + [REJECTED]]
    assert layout.token_weights.tolist() == [[2, 2, 2, 1, 1, 1]]
    # scored: chosen 8 (from 7), 9 (from 8); rejected 10 (from 7, the shared last prompt state)
    assert layout.labels.tolist() == [8, 9, 10]
    assert layout.pred_index.tolist() == [2, 3, 2]


def test_mask_rejected_sees_prompt_and_itself_never_chosen():
    layout = build_layout(*collate(PAIRS[:1]), prefix_sharing=True, padding_free=False)
    allowed = allowed_mask(layout)[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 1],
    ]
    add = additive_mask(layout, torch.float32)
    assert add.dtype == torch.float32
    assert (add[allowed_mask(layout)] == 0).all()
    assert (add[~allowed_mask(layout)] == torch.finfo(torch.float32).min).all()


@pytest.mark.parametrize("sharing", [False, True])
@pytest.mark.parametrize("packing", [False, True])
def test_scatter_round_trip_gives_the_padded_tokens(sharing, packing):
    input_ids, attention, completion = collate(PAIRS)
    layout = build_layout(input_ids, attention, completion, prefix_sharing=sharing, padding_free=packing, capacity=0)
    flat = layout.input_ids.reshape(-1)
    # every scored token's predicting state holds the padded layout's previous token
    expected_prev = input_ids[:, :-1][layout.score_mask]
    assert torch.equal(flat[layout.pred_index], expected_prev)
    assert torch.equal(scatter_scored(layout.labels, layout.score_mask), input_ids[:, 1:] * completion[:, 1:])
    real = int(attention.sum())
    shared_prompts = sum(len(p[0]) for p in PAIRS)
    assert layout.real_tokens == (real - shared_prompts if sharing else real)
    assert float(layout.token_weights.sum()) == real
    if packing:
        longest = max(len(p[0]) + len(p[1]) + (len(p[2]) if sharing else 0) for p in PAIRS)
        assert layout.row_length == longest
        assert layout.num_rows == (3 if sharing else 5)


def test_padding_free_without_capacity_is_one_row_without_padding():
    layout = build_layout(*collate(PAIRS), prefix_sharing=True, padding_free=True)
    assert layout.num_rows == 1
    assert (layout.segment_ids >= 0).all()
    assert layout.segment_ids.unique().numel() == len(PAIRS)


def test_keep_end_truncation_that_cuts_prompts_differently_is_laid_out_unshared():
    pairs = [([1, 2, 3, 4], [5, 6], [7, 8, 9, 10]), ([11, 12], [13], [14])]
    batch = collate(pairs, max_length=5, keep_end=True)
    layout = build_layout(*batch, prefix_sharing=True, padding_free=False)
    assert layout.unshared_pairs == 1
    flat = layout.input_ids.reshape(-1)
    assert torch.equal(flat[layout.pred_index], batch[0][:, :-1][layout.score_mask])


def test_flex_mask_mod_matches_the_dense_mask():
    from torch.nn.attention.flex_attention import create_mask

    layout = build_layout(*collate(PAIRS), prefix_sharing=True, padding_free=True, capacity=0)
    for window in (None, 3):
        rows, length = layout.input_ids.shape
        dense = create_mask(mask_mod(layout, window), rows, 1, length, length, device="cpu")
        assert torch.equal(dense, allowed_mask(layout, window))


# ------------------------------------------------------------------------------------ against the model forward
def _tiny(kind, attn, **extra):
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(0)
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=3, attn_implementation=attn))
    elif kind == "gemma2":
        config = Gemma2Config(**common, head_dim=8, sliding_window=3, attn_implementation=attn)
        model = Gemma2ForCausalLM(config)
    elif kind == "gemma3":  # sliding layers with their own RoPE base, one global layer in two
        config = Gemma3TextConfig(**common, head_dim=8, sliding_window=3, sliding_window_pattern=2)
        config._attn_implementation = attn
        model = Gemma3ForCausalLM(config)
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, attn_implementation=attn, **extra))
    return model.eval()


MODELS = {
    "qwen2-sdpa": ("qwen2", "sdpa", {}),
    "qwen2-eager": ("qwen2", "eager", {}),
    "qwen2-sliding-layer": (
        "qwen2",
        "sdpa",
        dict(use_sliding_window=True, sliding_window=3, max_window_layers=1),
    ),
    "mistral-window-3": ("mistral", "sdpa", {}),
    "gemma2-window-3-eager": ("gemma2", "eager", {}),
    "gemma3-window-3-eager": ("gemma3", "eager", {}),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("sharing", "packing"), [(True, False), (False, True), (True, True)], ids=["S", "Pf", "SP"])
def test_packed_hidden_states_equal_the_padded_forward(name, sharing, packing):
    from trl_ipo.packed import layout_attention_mask

    kind, attn, extra = MODELS[name]
    model = _tiny(kind, attn, **extra)
    if name == "qwen2-sliding-layer":
        assert model.config.layer_types == ["full_attention", "sliding_attention"]
    input_ids, attention, completion = collate(PAIRS)
    with torch.no_grad():
        padded = model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        layout = build_layout(
            input_ids, attention, completion, prefix_sharing=sharing, padding_free=packing, capacity=0
        )
        mask = layout_attention_mask(model, layout, torch.float32)
        packed = model.model(input_ids=layout.input_ids, attention_mask=mask, position_ids=layout.position_ids)
    packed = packed.last_hidden_state.reshape(-1, padded.size(-1))
    torch.testing.assert_close(packed[layout.pred_index], padded[:, :-1][layout.score_mask], rtol=1e-5, atol=1e-5)
    if "sliding" in name or "window" in name:  # the window really cuts: without it the states differ
        plain = layout_attention_mask(_tiny("qwen2", "sdpa"), layout, torch.float32)
        with torch.no_grad():
            wrong = model.model(input_ids=layout.input_ids, attention_mask=plain, position_ids=layout.position_ids)
        wrong = wrong.last_hidden_state.reshape(-1, padded.size(-1))[layout.pred_index]
        assert (wrong - padded[:, :-1][layout.score_mask]).abs().max() > 1e-3


def test_flex_block_mask_is_built_from_the_ids_on_the_layouts_device():
    """The CUDA flex path's BlockMask, built here on CPU: its mask_mod is the dense mask, per layer type."""
    from torch.nn.attention.flex_attention import BlockMask

    from trl_ipo.packed import layout_attention_mask

    layout = build_layout(*collate(PAIRS), prefix_sharing=True, padding_free=True)
    model = _tiny("qwen2", "sdpa", use_sliding_window=True, sliding_window=3, max_window_layers=1)
    model.config._attn_implementation = "flex_attention"
    masks = layout_attention_mask(model, layout, torch.bfloat16)
    assert set(masks) == {"full_attention", "sliding_attention"}
    rows, length = layout.input_ids.shape
    idx = torch.arange(length)
    for name, window in (("full_attention", None), ("sliding_attention", 3)):
        block = masks[name]
        assert isinstance(block, BlockMask)
        assert block.shape == (rows, 1, length, length)
        dense = block.mask_mod(torch.zeros((), dtype=torch.long), 0, idx[:, None], idx[None, :])
        assert torch.equal(dense, allowed_mask(layout, window)[0, 0])
