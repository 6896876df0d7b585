"""Check 2: ``prefix_sharing`` (S), ``padding_free`` (Pf) and both (SP) against IPOTrainer's padded path.

Each model family (Qwen2, Llama, Gemma 3 with its alternating sliding-window and global layers) trains with each
attention backend (sdpa, eager, flex_attention) for a few optimizer steps, padded and in each layout, from the same
policy (moved off the reference) on the same rows: the loss, the gradients before every optimizer step and every
logged metric must agree to fp32 rounding. Then one bf16 run per backend (SP against padded, one step).
"""

from __future__ import annotations

from benchmarks.gpucheck import models
from benchmarks.gpucheck.report import entry, failed, skipped
from benchmarks.gpucheck.runs import grads_diff, history_diff, train, train_args
from benchmarks.gpucheck.settings import BF16_GRAD_REL_L2, BF16_LAYOUT_RTOL, FP32_RTOL

LAYOUTS = {
    "S": dict(prefix_sharing=True),
    "Pf": dict(padding_free=True),
    "SP": dict(prefix_sharing=True, padding_free=True),
}
BACKENDS = ("sdpa", "eager", "flex_attention")


def layout_checks(ctx) -> list[dict]:
    from trl_ipo import IPOConfig, IPOTrainer

    cfg = ctx.cfg
    data, steps = cfg.check_data, cfg.layout_steps
    rows = models.rows(data, steps, workload="balanced", seed=cfg.seed)
    results = []

    def run(shape, attn, dtype, n_steps, flags, tag):
        policy, ref = models.copies(ctx.model(shape), dtype, attn)
        out = ctx.workdir / f"layout-{shape.name}-{attn}-{tag}-{dtype}"
        args = train_args(cfg, out, data, n_steps, bf16=dtype == "bfloat16", **flags)
        return train(IPOTrainer, IPOConfig, policy, ref, ctx.tok, rows[: data.pairs * n_steps], args, grads=True)

    for shape in cfg.layout_models:
        for attn in BACKENDS:
            names = [f"layouts/{shape.name}/{attn}/{layout}" for layout in LAYOUTS]
            if attn == "flex_attention" and ctx.flex_error:
                results += [skipped(n, f"flex_attention cannot train on {cfg.device}: {ctx.flex_error}") for n in names]
                continue
            try:
                padded = run(shape, attn, "float32", steps, {}, "padded")
            except Exception as err:  # reported in the check, the run goes on
                results += [failed(n, err) for n in names]
                continue
            for name, layout in zip(names, LAYOUTS, strict=True):
                try:
                    packed = run(shape, attn, "float32", steps, LAYOUTS[layout], layout)
                except Exception as err:
                    results.append(failed(name, err))
                    continue
                results.append(_compare(name, shape, attn, padded, packed, steps, data))
    for attn in BACKENDS:
        name = f"layouts/bf16/{cfg.layout_models[0].name}/{attn}/SP"
        if attn == "flex_attention" and ctx.flex_error:
            results.append(skipped(name, f"flex_attention cannot train on {cfg.device}: {ctx.flex_error}"))
            continue
        try:
            shape = cfg.layout_models[0]
            padded = run(shape, attn, "bfloat16", 1, {}, "padded")
            packed = run(shape, attn, "bfloat16", 1, LAYOUTS["SP"], "SP")
        except Exception as err:
            results.append(failed(name, err))
            continue
        results.append(_compare_bf16(name, padded, packed))
    return results


def _compare(name, shape, attn, padded, packed, steps, data) -> dict:
    loss, _ = history_diff(padded, packed, keys=("loss",), floor=0.0)
    metrics, where = history_diff(padded, packed)
    grads, grad_where = grads_diff(padded, packed)
    losses = padded.values("loss")
    moved = len(set(losses)) == len(losses)
    worst = max(loss, metrics, grads)
    keys = len(padded.history[0]) if padded.history else 0
    detail = (
        f"{shape.name}, {attn}, fp32, {steps} steps of {data.pairs} pairs: loss within {loss:.2g} (relative), "
        f"{keys} logged metrics within {metrics:.2g} (relative to max(|x|, 1); worst {where or '–'}), gradients "
        f"within {grads:.2g} (relative L2 of the whole gradient before each optimizer step; largest per tensor: "
        f"{grad_where or '–'}); padded losses " + ", ".join(f"{x:.6g}" for x in losses)
    )
    if not moved:
        detail += "; FAILED: the loss did not change between steps"
    return entry(name, worst, FP32_RTOL, detail, passed=moved and worst <= FP32_RTOL)


def _compare_bf16(name, padded, packed) -> dict:
    loss, _ = history_diff(padded, packed, keys=("loss",), floor=0.0)
    metrics, where = history_diff(padded, packed)
    grads, grad_where = grads_diff(padded, packed)
    worst = max(loss, metrics)
    detail = (
        f"bf16 weights, one step: loss within {loss:.2g}, metrics within {metrics:.2g} (worst {where or '–'}), "
        f"gradients within {grads:.2g} relative L2 (largest per tensor: {grad_where or '–'}). Tolerance {BF16_LAYOUT_RTOL} for "
        f"loss and metrics, {BF16_GRAD_REL_L2} for gradients: bf16 keeps 8 bits of mantissa (relative step 2^-8 = "
        "0.4%), and the two layouts sum attention and matmuls over different row lengths, so each rounds differently"
    )
    ok = loss <= BF16_LAYOUT_RTOL and metrics <= BF16_LAYOUT_RTOL and grads <= BF16_GRAD_REL_L2
    return entry(name, worst, BF16_LAYOUT_RTOL, detail, passed=ok)
