"""Layout math for packed and prefix-shared preference batches (tensors only: no trainer or model code here).

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

Device work. The index maps are built on the batch's device with whole-tensor operations. The host needs a handful
of integers per row (lengths, prompt ends, whether a pair's two prompts agree) to decide which segment goes into
which packed row; they travel in **one** device-to-host copy per batch (:func:`build_layout`'s only host
synchronisation). Nothing else waits on the device.
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


@dataclass
class _RowPlan:
    """Host-side placement of each padded row: where its token 0 lands and how its tail is shifted."""

    base: list[int]  # flat packed index of token 0
    split: list[int]  # tokens at or after this index are branch tokens (CHOSEN/REJECTED); before it, SHARED
    shift: list[int]  # extra offset of the tokens at or after `split` (a shared pair's rejected branch)
    segment: list[int]  # segment id
    rows: int
    length: int
    unshared: int


def _row_facts(input_ids, attention_mask, completion_mask) -> tuple[list[int], list[int], list[bool], int]:
    """Per padded row: real length and first completion index; per pair: whether the two prompts agree; and the
    number of scored tokens. One device-to-host copy."""
    rows, width = attention_mask.shape
    pairs = rows // 2
    real = attention_mask.bool()
    lengths = real.sum(dim=1)
    idx = torch.arange(width, device=attention_mask.device)
    completion = completion_mask.bool() & real
    starts = torch.where(completion.any(dim=1), completion.long().argmax(dim=1), lengths)
    chosen_start, rejected_start = starts[:pairs], starts[pairs:]
    same_token = input_ids[:pairs] == input_ids[pairs:]
    prompt_agrees = (same_token | (idx >= chosen_start[:, None])).all(dim=1) & (chosen_start == rejected_start)
    scored = (completion_mask[:, 1:].bool() & real[:, 1:]).sum()
    left_gap = (real[:, 1:] & ~real[:, :-1]).any()  # a real token after padding: not right-padded
    facts = torch.cat([lengths, starts, prompt_agrees.long(), torch.stack([scored, left_gap.long()])])
    values = facts.tolist()  # the one host synchronisation
    if values[-1]:
        raise ValueError("packed layouts need right-padded rows (TRL's preference collator pads on the right).")
    agrees = [bool(v) for v in values[2 * rows : 2 * rows + pairs]]
    return values[:rows], values[rows : 2 * rows], agrees, values[-2]


def _first_fit(sizes: list[int], capacity: int) -> list[list[int]]:
    """Unit indices per packed row: first fit, longest first."""
    rows: list[list[int]] = []
    fill: list[int] = []
    for u in sorted(range(len(sizes)), key=lambda u: -sizes[u]):
        for k, used in enumerate(fill):
            if used + sizes[u] <= capacity:
                rows[k].append(u)
                fill[k] += sizes[u]
                break
        else:
            rows.append([u])
            fill.append(sizes[u])
    return rows


def _plan(lengths, starts, agrees, prefix_sharing, padding_free, capacity) -> _RowPlan:
    """Place every padded row (host integers only). A unit is kept within one packed row: a shared pair, an
    unshared pair (both rows, one after the other), or one sequence."""
    pairs = len(lengths) // 2
    units: list[list[tuple[int, int]]] = []  # per unit: (padded row, offset in the unit)
    sizes: list[int] = []
    shared: dict[int, int] = {}  # rejected row -> prompt end, for shared pairs
    unshared = 0
    for i in range(pairs):
        c, r = i, pairs + i
        if not prefix_sharing:
            units += [[(c, 0)], [(r, 0)]]
            sizes += [lengths[c], lengths[r]]
        elif agrees[i]:
            units.append([(c, 0), (r, 0)])
            sizes.append(lengths[c] + lengths[r] - starts[c])
            shared[r] = starts[c]
        else:  # e.g. keep_end truncation cut the prompt differently in the two rows
            unshared += 1
            units.append([(c, 0), (r, lengths[c])])
            sizes.append(lengths[c] + lengths[r])
    if padding_free:
        cap = max(sizes) if capacity is not None else sum(sizes)
        packed_rows = _first_fit(sizes, max(cap, capacity or 0))
    else:
        packed_rows = [[u] for u in range(len(units))]
    length = max(sum(sizes[u] for u in row) for row in packed_rows)

    n = len(lengths)
    base, split, shift, segment = [0] * n, list(lengths), [0] * n, [0] * n
    next_segment = 0
    for k, row in enumerate(packed_rows):
        offset = k * length
        for u in row:
            is_shared = units[u][-1][0] in shared
            for padded_row, at in units[u]:
                base[padded_row], segment[padded_row] = offset + at, next_segment
                next_segment += not is_shared
            if is_shared:  # the rejected row's prompt lands on the chosen row's places, its tail after the chosen
                chosen, rejected = (r for r, _ in units[u])
                split[chosen] = split[rejected] = shared[rejected]
                shift[rejected] = lengths[chosen] - shared[rejected]
                next_segment += 1
            offset += sizes[u]
    return _RowPlan(base, split, shift, segment, len(packed_rows), length, unshared)


def build_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    prefix_sharing: bool,
    padding_free: bool,
    capacity: int | None = None,
) -> PackedLayout:
    """Re-lay a collated preference batch out (see the module docstring), on the batch's device.

    ``capacity``: most tokens per packed row with ``padding_free`` (never below the longest segment group); ``None``
    packs everything into one row. Without ``padding_free`` each pair (shared) or each sequence gets its own row.
    """
    rows, width = input_ids.shape
    if rows % 2:
        raise ValueError(f"a preference batch has an even number of rows (chosen then rejected), got {rows}.")
    device = input_ids.device
    lengths, starts, agrees, num_scored = _row_facts(input_ids, attention_mask, completion_mask)
    plan = _plan(lengths, starts, agrees, prefix_sharing, padding_free, capacity)

    per_row = torch.tensor([lengths, plan.base, plan.split, plan.shift, plan.segment], dtype=torch.long)
    row_length, base, split, shift, segment = per_row.to(device)[:, :, None]  # one host-to-device copy
    t = torch.arange(width, device=device)[None, :]
    loc = base + t + (t >= split) * shift  # flat packed index of padded token (r, t)
    branch = torch.full((rows, 1), REJECTED, dtype=torch.long, device=device)
    branch[: rows // 2] = CHOSEN
    branch = torch.where(t < split, SHARED, branch)
    # The real tokens, by a selection whose size the host already knows (no synchronisation).
    real = torch.nonzero_static((t < row_length).reshape(-1), size=sum(lengths)).squeeze(1)
    dest = loc.reshape(-1)[real]

    def placed(values, fill, dtype):
        flat = torch.full((plan.rows * plan.length,), fill, dtype=dtype, device=device)
        return flat.index_put_((dest,), values.expand(rows, width).reshape(-1)[real].to(dtype))

    flat_ids = placed(input_ids, 0, input_ids.dtype)
    flat_pos = placed(t, 0, torch.long)
    flat_seg = placed(segment, PAD, torch.long)
    flat_branch = placed(branch, PAD, torch.long)
    weights = torch.zeros(plan.rows * plan.length, dtype=torch.float32, device=device).index_put_(
        (dest,), torch.ones_like(dest, dtype=torch.float32), accumulate=True
    )

    score_mask = completion_mask[:, 1:].bool() & attention_mask[:, 1:].bool()
    scored = torch.nonzero_static(score_mask.reshape(-1), size=num_scored).squeeze(1)
    pred_index = loc[:, :-1].reshape(-1)[scored]
    labels = input_ids[:, 1:].reshape(-1)[scored]
    shape = (plan.rows, plan.length)
    return PackedLayout(
        input_ids=flat_ids.view(shape),
        position_ids=flat_pos.view(shape),
        segment_ids=flat_seg.view(shape),
        branch_ids=flat_branch.view(shape),
        token_weights=weights.view(shape),
        pred_index=pred_index,
        labels=labels,
        score_mask=score_mask,
        unshared_pairs=plan.unshared,
    )


def scatter_scored(values: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """Scored values ``[N]`` back into the padded path's ``[2B, L-1]`` shape, zero elsewhere."""
    return values.new_zeros(score_mask.shape).masked_scatter(score_mask, values)
