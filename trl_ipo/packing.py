"""Layout math for packed and prefix-shared preference batches (no trainer or model code here).

TRL's collator lays a batch of B pairs out as 2B right-padded rows: rows ``0..B-1`` are ``[prompt, chosen]``,
rows ``B..2B-1`` are ``[prompt, rejected]``. :func:`build_layout` re-lays the same tokens out:

* ``prefix_sharing``: each pair becomes one segment ``[prompt, chosen, rejected]``. Position ids restart at the end
  of the prompt for the rejected branch, and the attention mask lets the rejected branch see the prompt and itself,
  never the chosen branch (Wang et al. 2024, "Accelerating Direct Preference Optimization with Prefix Sharing",
  arXiv 2410.20305). Every token sees exactly the context and the positions it has in the padded layout.
* ``padding_free``: segments are packed into as few rows as the row capacity allows, kept apart by segment ids.

Every real token of the padded layout has a place in the packed one (prompt tokens of a shared pair share theirs).
The log-prob of padded token ``(r, t)`` is predicted from the hidden state of ``(r, t - 1)``; ``pred_index`` holds,
for each scored token in the row-major order of ``score_mask``, the flat packed index of that predicting state. The
first chosen and the first rejected token of a shared pair are both predicted from the last prompt state, so that
index appears twice. Scattering the scored values with ``score_mask`` gives back the ``[2B, L - 1]`` tensors of the
padded path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

PAD, SHARED, CHOSEN, REJECTED = -1, 0, 1, 2  # branch ids


@dataclass
class PackedLayout:
    """A packed batch. Tensors of shape ``[R, T]`` unless noted; ``-1`` marks row padding in the id tensors."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor  # one id per segment, unique in the batch
    branch_ids: torch.Tensor  # SHARED (prompt of a shared pair, or a whole unshared sequence), CHOSEN, REJECTED
    token_weights: torch.Tensor  # how many padded-layout tokens each packed token stands for (0 on padding)
    pred_index: torch.Tensor  # [N] flat index into R*T of the state predicting each scored token
    labels: torch.Tensor  # [N] the scored tokens
    score_mask: torch.Tensor  # [2B, L-1] bool, the padded path's shifted completion mask
    unshared_pairs: int = 0  # pairs whose two rows carry different prompts (laid out as two sequences)

    def to(self, device) -> PackedLayout:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return PackedLayout(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in values.items()})

    @property
    def num_rows(self) -> int:
        return self.input_ids.size(0)

    @property
    def row_length(self) -> int:
        return self.input_ids.size(1)

    @property
    def real_tokens(self) -> int:
        return int((self.segment_ids >= 0).sum())

    def attention_2d(self) -> torch.Tensor:
        """``[R, T]`` 1 on real tokens, 0 on row padding."""
        return (self.segment_ids >= 0).long()


@dataclass
class _Segment:
    spans: list  # (padded row, start, end, offset in the segment)
    positions: list
    branches: list

    @property
    def length(self) -> int:
        return len(self.positions)


def _row_extents(input_ids, attention_mask, completion_mask):
    """Per padded row: number of real tokens and index of the first completion token."""
    lengths = attention_mask.sum(dim=1)
    idx = torch.arange(attention_mask.size(1)).expand_as(attention_mask)
    if not torch.equal(attention_mask.bool(), idx < lengths[:, None]):
        raise ValueError("packed layouts need right-padded rows (TRL's preference collator pads on the right).")
    completion = completion_mask.bool() & attention_mask.bool()
    starts = torch.where(completion.any(dim=1), completion.float().argmax(dim=1), lengths)
    return lengths.tolist(), starts.tolist()


def build_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    prefix_sharing: bool,
    padding_free: bool,
    capacity: int | None = None,
) -> PackedLayout:
    """Re-lay a collated preference batch out (see the module docstring).

    ``capacity``: most tokens per packed row with ``padding_free`` (never below the longest segment group); ``None``
    packs everything into one row. Without ``padding_free`` each pair (shared) or each sequence gets its own row.
    """
    input_ids, attention_mask, completion_mask = (
        t.detach().cpu() for t in (input_ids, attention_mask, completion_mask)
    )
    rows, width = input_ids.shape
    if rows % 2:
        raise ValueError(f"a preference batch has an even number of rows (chosen then rejected), got {rows}.")
    pairs = rows // 2
    lengths, starts = _row_extents(input_ids, attention_mask, completion_mask)
    ids = input_ids.tolist()

    def plain(r):
        n = lengths[r]
        return _Segment([(r, 0, n, 0)], list(range(n)), [SHARED] * n)

    units, unshared = [], 0  # a unit is kept within one row: a shared pair, an unshared pair, or one sequence
    for i in range(pairs):
        c, r = i, pairs + i
        if not prefix_sharing:
            units += [[plain(c)], [plain(r)]]
            continue
        p = starts[c]
        if p != starts[r] or ids[c][:p] != ids[r][:p]:
            unshared += 1  # e.g. keep_end truncation cut the prompt differently in the two rows
            units.append([plain(c), plain(r)])
            continue
        nc, nr = lengths[c], lengths[r]
        spans = [(c, 0, nc, 0), (r, 0, p, 0), (r, p, nr, nc)]
        positions = list(range(nc)) + list(range(p, nr))
        branches = [SHARED] * p + [CHOSEN] * (nc - p) + [REJECTED] * (nr - p)
        units.append([_Segment(spans, positions, branches)])

    sizes = [sum(s.length for s in unit) for unit in units]
    packed_rows: list[list[int]] = []  # unit indices per row
    if padding_free:
        cap = max(sizes) if capacity is not None else sum(sizes)
        cap = max(cap, capacity or 0)
        fill: list[int] = []
        for u in sorted(range(len(units)), key=lambda u: -sizes[u]):  # first fit, longest first
            for k, used in enumerate(fill):
                if used + sizes[u] <= cap:
                    packed_rows[k].append(u)
                    fill[k] += sizes[u]
                    break
            else:
                packed_rows.append([u])
                fill.append(sizes[u])
    else:
        packed_rows = [[u] for u in range(len(units))]
    length = max(sum(sizes[u] for u in row) for row in packed_rows)

    shape = (len(packed_rows), length)
    out_ids = torch.zeros(shape, dtype=input_ids.dtype)
    out_pos = torch.zeros(shape, dtype=torch.long)
    out_seg = torch.full(shape, PAD, dtype=torch.long)
    out_branch = torch.full(shape, PAD, dtype=torch.long)
    weights = torch.zeros(shape, dtype=torch.float32)
    loc = torch.full((rows, width), -1, dtype=torch.long)
    segment = 0
    for k, row in enumerate(packed_rows):
        offset = 0
        for u in row:
            for seg in units[u]:
                n = seg.length
                out_pos[k, offset : offset + n] = torch.tensor(seg.positions)
                out_branch[k, offset : offset + n] = torch.tensor(seg.branches)
                out_seg[k, offset : offset + n] = segment
                for src, start, end, at in seg.spans:
                    dst = slice(offset + at, offset + at + end - start)
                    out_ids[k, dst] = input_ids[src, start:end]
                    weights[k, dst] += 1
                    loc[src, start:end] = torch.arange(dst.start, dst.stop) + k * length
                offset += n
                segment += 1

    score_mask = completion_mask[:, 1:].bool() & attention_mask[:, 1:].bool()
    pred_index = loc[:, :-1][score_mask]
    if (pred_index < 0).any():  # cannot happen for right-padded rows; guards the index maps
        raise AssertionError("a scored token has no predicting state in the packed layout")
    return PackedLayout(
        input_ids=out_ids,
        position_ids=out_pos,
        segment_ids=out_seg,
        branch_ids=out_branch,
        token_weights=weights,
        pred_index=pred_index,
        labels=input_ids[:, 1:][score_mask],
        score_mask=score_mask,
        unshared_pairs=unshared,
    )


def _visible(seg_q, seg_k, branch_q, branch_k, pos_q, pos_k, idx_q, idx_k, sliding_window):
    """Whether query q may attend to key k (element-wise; works on broadcast tensors and inside a flex mask_mod)."""
    allowed = (seg_q == seg_k) & (seg_k >= 0) & (idx_k <= idx_q) & ((branch_k == SHARED) | (branch_k == branch_q))
    if sliding_window is not None:
        allowed = allowed & (pos_q - pos_k < sliding_window)
    return allowed


def allowed_mask(layout: PackedLayout, sliding_window: int | None = None) -> torch.Tensor:
    """``[R, 1, T, T]`` bool, True where a query may attend to a key. Padding queries see only themselves."""
    seg, branch, pos = layout.segment_ids, layout.branch_ids, layout.position_ids
    idx = torch.arange(seg.size(1), device=seg.device)
    allowed = _visible(
        seg[:, :, None],
        seg[:, None, :],
        branch[:, :, None],
        branch[:, None, :],
        pos[:, :, None],
        pos[:, None, :],
        idx[None, :, None],
        idx[None, None, :],
        sliding_window,
    )
    pad_diagonal = (seg[:, :, None] < 0) & (idx[None, :, None] == idx[None, None, :])
    return (allowed | pad_diagonal)[:, None]


def additive_mask(layout: PackedLayout, dtype: torch.dtype, sliding_window: int | None = None) -> torch.Tensor:
    """``[R, 1, T, T]`` float mask for sdpa and eager attention: 0 where visible, the dtype's minimum elsewhere."""
    allowed = allowed_mask(layout, sliding_window)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def mask_mod(layout: PackedLayout, sliding_window: int | None = None):
    """A flex-attention ``mask_mod(b, h, q, kv)`` for the layout, reading the id tensors on their device."""
    seg, branch, pos = layout.segment_ids, layout.branch_ids, layout.position_ids

    def visible(b, h, q, kv):
        seg_q = seg[b, q]
        allowed = _visible(seg_q, seg[b, kv], branch[b, q], branch[b, kv], pos[b, q], pos[b, kv], q, kv, sliding_window)
        return allowed | ((seg_q < 0) & (q == kv))

    return visible


def block_mask(layout: PackedLayout, sliding_window: int | None = None):
    """A flex-attention ``BlockMask`` built on the layout's device from its segment and branch ids."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, length = layout.input_ids.shape
    device = layout.segment_ids.device
    return create_block_mask(mask_mod(layout, sliding_window), rows, None, length, length, device=device)


def scatter_scored(values: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """Scored values ``[N]`` back into the padded path's ``[2B, L-1]`` shape, zero elsewhere."""
    return values.new_zeros(score_mask.shape).masked_scatter(score_mask, values)


def token_counts(input_ids, attention_mask, completion_mask, prefix_sharing: bool) -> tuple[int, int]:
    """Tokens through the model per batch: (padded layout incl. padding, packed layout without padding)."""
    padded = input_ids.numel()
    real = int(attention_mask.sum())
    if not prefix_sharing:
        return padded, real
    lengths, starts = _row_extents(input_ids.cpu(), attention_mask.cpu(), completion_mask.cpu())
    pairs = len(lengths) // 2
    shared = sum(starts[i] for i in range(pairs) if starts[i] == starts[pairs + i])
    return padded, real - shared
