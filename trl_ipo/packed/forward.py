"""The packed forward: the model's backbone on the packed rows, TRL's chunked LM head on the scored positions only.

:func:`install_packed_forward` wraps the forward TRL's fused LM head installed, so that
``model(..., packed_layout=layout)`` runs inside the model's own forward (ZeRO-3 hooks and PEFT wrappers stay in
charge) and returns TRL's ``FusedCausalLMOutput`` whose per-token fields are the ``[N]`` scored tokens of ``layout``
in ``layout.score_mask`` order. Any other call is the previous forward.
"""

from __future__ import annotations

import types

from .. import _compat
from .layout import PackedLayout

CHUNK_SIZE = 32768
_DROPPED_KWARGS = ("labels", "shift_labels", "fused_lm_head", "num_items_in_batch")


def install_packed_forward(model, outputs=("log_probs",)) -> None:
    """Wrap ``model.forward`` (already patched by TRL's ``add_fused_lm_head``) with the packed path (once)."""
    if getattr(model, "_ipo_packed_forward", False):
        return
    previous = model.forward
    config = model.config.get_text_config()
    softcap, logit_scale = _compat.logit_transform(config)

    def forward(self, *args, packed_layout: PackedLayout | None = None, **kwargs):
        if packed_layout is None:
            return previous(*args, **kwargs)
        for key in _DROPPED_KWARGS:
            kwargs.pop(key, None)  # PEFT passes labels=None through; the layout carries the labels
        kwargs["use_cache"] = False
        router = bool(kwargs.get("output_router_logits") or getattr(config, "output_router_logits", False))
        if router:
            kwargs["output_router_logits"] = True
        backbone_out = self.base_model(*args, **kwargs)
        hidden = backbone_out.last_hidden_state
        hidden = hidden.reshape(-1, hidden.size(-1))[packed_layout.pred_index]
        lm_head = self.get_output_embeddings()
        hidden = hidden.to(lm_head.weight.device)
        labels = packed_layout.labels.to(hidden.device)
        with _compat.gather_lm_head(lm_head.weight, lm_head.bias):
            per_token = _compat.chunked_log_probs(
                hidden,
                lm_head.weight,
                lm_head.bias,
                labels,
                chunk_size=CHUNK_SIZE,
                softcap=softcap,
                logit_scale=logit_scale,
                outputs=outputs,
            )
        fields = dict(zip(_compat.FUSED_FIELDS, per_token, strict=True))
        aux_loss = None
        if router:
            # Each packed token weighs as many padded-layout tokens as it stands for (a shared prompt token: 2),
            # so the load-balancing loss is the padded path's.
            weights = packed_layout.token_weights.to(hidden.device)
            aux_loss = _compat.load_balancing_loss(backbone_out.router_logits, config, weights)
        loss = -fields["log_probs"].sum() / max(labels.numel(), 1)
        return _compat.fused_output(loss=loss, label_mask=None, aux_loss=aux_loss, **fields)

    model.forward = types.MethodType(forward, model)
    model._ipo_packed_forward = True
