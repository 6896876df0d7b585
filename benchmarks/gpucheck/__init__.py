"""The GPU check: ``bash scripts/gpu_check.sh`` (``python -m benchmarks.gpucheck``), one call on a machine with
one CUDA GPU, or ``--device cpu --tiny`` here. docs/gpu-check.md says how to run it and what it checks.

Checks (each an entry of ``checks`` in ``cuda-check.json``: name, passed, max_rel_diff, tolerance, detail):

1. ``parity/*``: IPOTrainer against ``trl.DPOTrainer(loss_type=["ipo"])``, 3 optimizer steps, fp32 and bf16
   (:mod:`.parity`);
2. ``layouts/*``: prefix_sharing, padding_free and both against the padded path, per model family and attention
   backend, fp32, plus one bf16 run per backend (:mod:`.layouts`);
3. ``zero3/*``: the packaged ZeRO-3 config through the DeepSpeed launcher, with and without prefix_sharing,
   against the same runs without DeepSpeed, and the reference's ZeRO-3 partitioning (:mod:`.zero3`);
4. ``precompute_ref_log_probs``: the first step's loss with precomputed reference log-probs (:mod:`.parity`).

Then the benchmark rows (:mod:`.bench`) and the targets. Modules: ``settings`` (modes, shapes, tolerances),
``models`` (random-init models, tokenizer, data), ``runs`` (training through the public API, comparison
measures), ``context`` (shared state, versions, GEMM rate), ``report`` (JSON and Markdown), ``cli``.
"""
