"""Check 1, IPOTrainer against TRL's own IPO (``DPOTrainer(loss_type=["ipo"])``), and check 4, precomputed
reference log-probs against the live reference: the same models, data and settings, trained through the public API.

With hard labels and the defaults, IPOTrainer's loss (Δ − t/β)², t = ½ (Azar et al. 2023, eq. 17 with the
symmetric target of eq. 16), is TRL's ``(logits − 1/(2β))²``: the losses and gradient norms of every step agree.
"""

from __future__ import annotations

from benchmarks.gpucheck import models
from benchmarks.gpucheck.report import entry
from benchmarks.gpucheck.runs import history_diff, train, train_args
from benchmarks.gpucheck.settings import BF16_PARITY_RTOL, FP32_RTOL

BF16_REASON = (
    "not bit-identical in bf16: the two trainers form the same loss in a different order of fp32 operations "
    "(IPOTrainer: the per-pair margin Δ, then (Δ − t/β)²; TRL: chosen minus rejected log-ratio, then its square), "
    "so the loss differs in its last bits, the bf16 backward rounds that difference into the gradients and the "
    "updates carry it to the next steps"
)


def parity_checks(ctx, dtypes=("float32", "bfloat16")) -> list[dict]:
    from trl import DPOConfig, DPOTrainer

    from trl_ipo import IPOConfig, IPOTrainer

    cfg, shape = ctx.cfg, ctx.cfg.parity_model
    base = ctx.model(shape)
    rows = models.rows(cfg.check_data, cfg.parity_steps, seed=cfg.seed)
    results = []
    for dtype in dtypes:
        runs = {}
        for label, trainer_cls, config_cls, extra in (
            ("ipo", IPOTrainer, IPOConfig, {}),
            ("trl", DPOTrainer, DPOConfig, {"loss_type": ["ipo"]}),
        ):
            policy, ref = models.copies(base, dtype, "sdpa")
            out = ctx.workdir / f"parity-{label}-{dtype}"
            args = train_args(cfg, out, cfg.check_data, cfg.parity_steps, bf16=dtype == "bfloat16", **extra)
            runs[label] = train(trainer_cls, config_cls, policy, ref, ctx.tok, rows, args)
        ours, stock = runs["ipo"], runs["trl"]
        diff, where = history_diff(stock, ours, keys=("loss", "grad_norm"), floor=0.0)
        losses = ours.values("loss")
        moved = len(set(losses)) == len(losses)
        identical = all(
            x[k] == y[k] for x, y in zip(stock.history, ours.history, strict=True) for k in ("loss", "grad_norm")
        )
        detail = (
            f"{shape.name} ({ctx.parameters(shape):,} parameters), {dtype}, {cfg.parity_steps} optimizer steps of "
            f"{cfg.check_data.pairs} pairs; losses {_fmt(losses)}, TRL {_fmt(stock.values('loss'))}; grad norms "
            f"{_fmt(ours.values('grad_norm'))}, TRL {_fmt(stock.values('grad_norm'))}; largest difference at {where or '–'}"
        )
        if not moved:
            detail += "; FAILED: the loss did not change between steps, so the comparison would be trivial"
        if dtype == "float32":
            results.append(entry(f"parity/{dtype}", diff, FP32_RTOL, detail, passed=moved and diff <= FP32_RTOL))
        else:
            detail = ("bit-identical in bf16; " if identical else BF16_REASON + "; ") + detail
            tol = BF16_PARITY_RTOL
            results.append(entry(f"parity/{dtype}", diff, tol, detail, passed=moved and diff <= tol))
    return results


def precompute_check(ctx) -> dict:
    """``precompute_ref_log_probs=True``: the reference log-probs come from the dataset columns TRL precomputes
    before training; the first step's loss equals the live reference's."""
    from trl_ipo import IPOConfig, IPOTrainer

    cfg, shape = ctx.cfg, ctx.cfg.parity_model
    base = ctx.model(shape)
    rows = models.rows(cfg.check_data, 1, seed=cfg.seed)
    runs = {}
    for label, extra in (("live", {}), ("precomputed", {"precompute_ref_log_probs": True})):
        policy, ref = models.copies(base, "float32", "sdpa")
        args = train_args(cfg, ctx.workdir / f"precompute-{label}", cfg.check_data, 1, bf16=False, **extra)
        runs[label] = train(IPOTrainer, IPOConfig, policy, ref, ctx.tok, rows, args)
    live, pre = runs["live"], runs["precomputed"]
    diff, _ = history_diff(live, pre, keys=("loss",), floor=0.0)
    metrics, where = history_diff(live, pre, keys=[k for k in live.history[0] if k.startswith(("ipo/", "rewards/"))])
    detail = (
        f"{shape.name}, fp32, first step of {cfg.check_data.pairs} pairs with the policy moved off the reference: "
        f"loss {live.values('loss')[0]!r} live, {pre.values('loss')[0]!r} precomputed; ipo/* and rewards/* "
        f"metrics within {metrics:.2g} (relative to max(|x|, 1){', at ' + where if where else ''})"
    )
    return entry("precompute_ref_log_probs", diff, FP32_RTOL, detail)


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"
