"""The packed path as the trainer sees it: one object, one call per forward.

:class:`PackedPath` takes a collated preference batch and returns the per-token outputs of the padded path
(``[2B, L-1]`` tensors, zero outside the completion) for the policy or the reference. The layout is built once per
batch and shared by both forwards; the model's first batch is self-checked against the padded path when its type is
not in the verified table (:mod:`trl_ipo.packed.support`).
"""

from __future__ import annotations

import warnings

import torch

from .. import _compat
from .forward import install_packed_forward
from .layout import PackedLayout, build_layout, scatter_scored
from .masks import layout_attention_mask, row_capacity
from .support import check_batch_inputs, check_packing_support, is_verified, self_check

PER_TOKEN_OUTPUTS = _compat.FUSED_FIELDS  # the fused LM head's per-token fields, [2B, L-1] on the padded path


def enabled(args) -> bool:
    return bool(args.prefix_sharing or args.padding_free)


class PackedPath:
    """``prefix_sharing`` / ``padding_free`` for one trainer: support checks, layout, mask, forward, scatter."""

    def __init__(self, args):
        self.args = args
        self.forward_calls = 0  # packed forwards run (policy and reference)
        self.layouts_built = 0
        self._cached: tuple[torch.Tensor, PackedLayout] | None = None
        self._checked: set[int] = set()  # models verified or self-checked

    def check(self, model, role: str, peft_config=None) -> None:
        check_packing_support(model, self.args, peft_config, role=role)

    def install(self, policy, reference, with_wpo: bool) -> None:
        """Wrap the policy's (the PEFT base model's) and the reference's forwards with the packed path."""
        outputs = tuple(f for f in PER_TOKEN_OUTPUTS if with_wpo or f != "log_sum_sq_probs")
        install_packed_forward(policy, outputs=outputs)
        if reference is not None:
            install_packed_forward(reference)

    def layout(self, model, inputs) -> PackedLayout:
        """The batch's layout, built on its device once and reused by the next forward of the same batch."""
        input_ids = inputs["input_ids"]
        if self._cached is not None and self._cached[0] is input_ids:
            return self._cached[1]
        check_batch_inputs(inputs, self.args)
        layout = build_layout(
            input_ids,
            inputs["attention_mask"],
            inputs["completion_mask"],
            prefix_sharing=self.args.prefix_sharing,
            padding_free=self.args.padding_free,
            capacity=row_capacity(model),
        )
        self.layouts_built += 1
        if layout.unshared_pairs:
            _warn_unshared(layout.unshared_pairs)
        self._cached = (input_ids, layout)
        return layout

    def forward(self, model, inputs, *, dtype: torch.dtype, router_logits: bool = False, role: str = "policy"):
        """The packed forward of ``model`` on the batch, with the padded path's per-token output shapes."""
        layout = self.layout(model, inputs)
        packed_kwargs = {
            "input_ids": layout.input_ids,
            "position_ids": layout.position_ids,
            "attention_mask": layout_attention_mask(model, layout, dtype),
            "use_cache": False,
        }
        if router_logits:
            packed_kwargs["output_router_logits"] = True
        outputs = model(**packed_kwargs, packed_layout=layout)
        self.forward_calls += 1
        for name in PER_TOKEN_OUTPUTS:
            value = getattr(outputs, name, None)
            if value is not None:
                setattr(outputs, name, scatter_scored(value, layout.score_mask))
        self._self_check_once(model, inputs, outputs.log_probs, role)
        return outputs

    def _self_check_once(self, model, inputs, packed_log_probs, role: str) -> None:
        key = id(model)
        if key in self._checked:
            return
        self._checked.add(key)
        if is_verified(model):
            return
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        with torch.no_grad():
            padded = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                labels=labels,
                fused_lm_head=True,
                use_cache=False,
            ).log_probs
        self_check(model, padded[:, -packed_log_probs.size(1) :], packed_log_probs.detach(), role)


def _warn_unshared(count: int) -> None:
    warnings.warn(
        f"prefix_sharing: {count} pair(s) in this batch carry different prompt tokens in their chosen and rejected "
        "rows (truncation_mode='keep_end' cut the prompt differently), so their prompt is computed once per "
        "completion for them; their loss is unchanged.",
        UserWarning,
        stacklevel=4,
    )
