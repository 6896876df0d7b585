"""benchmarks/ (scripts/bench.py): a tiny run reports every figure, consistently; the rotation is fair.

No timing is asserted."""

import json
import threading
import time
import warnings
from dataclasses import replace
from statistics import median

import pytest
import torch
from conftest import global_rng_restored

import benchmarks

VARIANTS = ["A", "A_prime", "B", "F", "F_metrics", "P"]


@pytest.fixture(scope="module")
def bench():
    """The benchmark package, imported like any module (the repository root is on sys.path)."""
    return benchmarks


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    """One tiny run on the code path of --device cuda (bf16 weights and autocast, MFU against a given peak)."""
    import datasets
    import transformers

    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # The benchmark sets torch's threads, warning filters and library verbosity for its process: restore them.
    threads, progress_bars = torch.get_num_threads(), datasets.is_progress_bar_enabled()
    verbosity = transformers.logging.get_verbosity(), datasets.logging.get_verbosity()
    try:
        with warnings.catch_warnings(), global_rng_restored():
            assert bench.main(["--tiny", "--dtype", "bfloat16", "--peak-tflops", "0.5", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
        transformers.logging.set_verbosity(verbosity[0])
        datasets.logging.set_verbosity(verbosity[1])
        datasets.enable_progress_bars() if progress_bars else datasets.disable_progress_bars()
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_variant_has_its_figures(report):
    cfg = report["config"]
    assert list(report["variants"]) == VARIANTS
    for v in report["variants"].values():
        steps = v["step_time_s"]
        assert len(steps["all"]) == cfg["steps"] == v["timed_steps"]
        assert (steps["min"], steps["median"], steps["max"]) == (
            min(steps["all"]),
            median(steps["all"]),
            max(steps["all"]),
        )
        assert len(v["iteration_time_s"]["all"]) >= cfg["steps"] - 1
        cpu = v["cpu_time_s"]["all"]
        assert len(cpu) == cfg["steps"]
        assert v["cpu_time_s"]["median"] == median(cpu)
        assert 0 <= v["sys_time_s"]["median"] <= v["cpu_time_s"]["median"]
        assert v["tokens_per_step"] == 2 * cfg["pairs"] * cfg["seq"]
        assert v["tokens_per_s"] == pytest.approx(v["tokens_per_step"] / steps["median"])
        assert v["achieved_tflops"] == pytest.approx(v["model_flops_per_step"] / steps["median"] / 1e12)
        assert v["mfu"] == pytest.approx(v["achieved_tflops"] / 0.5)
    precompute = report["variants"]["P"]
    assert precompute["precompute_pairs"] == cfg["pairs"] * (cfg["warmup"] + cfg["steps"])


@pytest.mark.slow
def test_model_flops_follow_the_hand_formula(report):
    cfg, model = report["config"], report["model"]
    d, layers, vocab, inter = cfg["hidden"], cfg["layers"], cfg["vocab"], cfg["intermediate"]
    # Qwen2 layer: q,k,v,o projections (+ q,k,v biases), gate/up/down MLP, two RMSNorms; then final norm, LM head.
    non_embedding = layers * (4 * d * d + 3 * d + 3 * d * inter + 2 * d) + d + vocab * d
    assert model["non_embedding_parameters"] == non_embedding
    assert model["parameters"] == non_embedding + vocab * d
    tokens, seq = 2 * cfg["pairs"] * cfg["seq"], cfg["seq"]
    forward = 2 * non_embedding + 4 * layers * d * seq
    for name, v in report["variants"].items():
        passes = 3 if name == "P" else 4  # policy forward+backward (3 forwards) + reference forward, none for P
        assert v["model_flops_per_step"] == pytest.approx(passes * forward * tokens)


@pytest.mark.slow
def test_ratios_and_targets_are_the_medians_quotients(report):
    med = {n: v["step_time_s"]["median"] for n, v in report["variants"].items()}
    expected = {
        "A/B": med["A"] / med["B"],
        "A_prime/A": med["A_prime"] / med["A"],
        "A/F": med["A"] / med["F"],
        "P/A": med["P"] / med["A"],
        "F_metrics/F": med["F_metrics"] / med["F"],
        "A/F_metrics": med["A"] / med["F_metrics"],
    }
    assert report["ratios"] == pytest.approx(expected)
    cpu = {n: v["cpu_time_s"]["median"] for n, v in report["variants"].items()}
    assert report["cpu_time_ratios"]["A/B"] == pytest.approx(cpu["A"] / cpu["B"])
    limits = {"A/B": 1.02, "A_prime/A": 1.02, "A/F": 1.10, "P/A": 0.80}
    for key, limit in limits.items():
        check = report["targets"][key]
        assert check["max"] == limit
        assert check["value"] == pytest.approx(expected[key])
        assert check["met"] == (expected[key] <= limit)
    mem = report["targets"]["memory A<=B"]
    assert mem["met"] == (report["memory"]["A"]["peak_bytes"] <= report["memory"]["B"]["peak_bytes"])


@pytest.mark.slow
def test_memory_is_measured_per_variant(report):
    assert list(report["memory"]) == [v for v in VARIANTS if v != "F_metrics"]  # F_metrics allocates like F
    for m in report["memory"].values():
        assert m["metric"] == "peak_rss"
        assert m["peak_reset"] is True
        assert m["added_bytes"] == m["peak_bytes"] - m["before_bytes"]
        assert m["added_bytes"] > 0


@pytest.mark.slow
def test_sequence_scan_and_provenance(report):
    cfg = report["config"]
    assert [row["seq"] for row in report["scan"]] == cfg["scan_seqs"]
    for row in report["scan"]:
        a = row["variants"]["A"]
        assert a["seq"] == row["seq"]
        assert a["tokens_per_step"] == 2 * cfg["pairs"] * row["seq"]
        assert a["step_time_s"]["median"] == median(a["step_time_s"]["all"])
    first = report["scan"][0]
    assert first["reused_from_main"] == ["A"]
    assert first["variants"]["A"] == report["variants"]["A"]
    assert report["command"].startswith("python scripts/bench.py --tiny")
    assert report["machine"]["torch_threads"] == cfg["threads"] == 2
    assert len(report["load_average"]["before_timing"]) == 3


def test_analytic_parameter_count_matches_a_built_model(bench, tmp_path):
    cfg = replace(bench.BenchConfig(), **bench.PRESETS["tiny"])
    built = bench.build_checkpoint(cfg, tmp_path)  # counts the parameters of the model it builds and saves
    assert bench.parameter_count(cfg)["parameters"] == built["parameters"]


def test_cuda_preset_is_a_half_billion_bf16_model_at_1024(bench):
    cfg = replace(bench.BenchConfig(), **bench.PRESETS["cuda"])
    assert (cfg.device, cfg.dtype, cfg.seq) == ("cuda", "bfloat16", 1024)
    assert 0.4e9 < bench.parameter_count(cfg)["parameters"] < 0.7e9
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda needs a CUDA device"):
            bench.parse_args(["--device", "cuda"])


def test_bad_options_are_named(bench):
    with pytest.raises(SystemExit, match="--hidden 30 is not divisible by --heads 4"):
        bench.parse_args(["--tiny", "--hidden", "30"])
    with pytest.raises(SystemExit, match=r"--variants has unknown \['C'\]"):
        bench.parse_args(["--variants", "A,C"])


def test_rotation_runs_one_variant_at_a_time_in_alternating_order(bench):
    events, lock = [], threading.Lock()

    class Dummy:
        def __init__(self, name):
            self.name = name

        def run(self, turn):
            for _ in range(3):
                turn.step_begin()
                with lock:
                    events.append(("begin", self.name))
                time.sleep(0.002)
                with lock:
                    events.append(("end", self.name))
                turn.step_end()

    turns = bench.run_interleaved([Dummy("x"), Dummy("y"), Dummy("z")], None, rounds=3)
    # Never two variants inside a step at once: every begin is followed by its own end.
    assert all(b == ("begin", e[1]) and e[0] == "end" for b, e in zip(events[::2], events[1::2], strict=True))
    assert [name for kind, name in events if kind == "begin"] == list("xyzzyxxyz")
    assert all(len(t.step_times) == 3 and len(t.iteration_times) == 2 for t in turns.values())


# ------------------------------------------------------------------------------- packed layouts on workload shapes
def test_workload_shapes_have_the_asked_ratios_spread_and_bounds(bench):
    import math
    import statistics

    cfg = replace(bench.BenchConfig(), shapes=list(bench.SHAPES), shape_steps=60)
    for shape, ratio in bench.SHAPES.items():
        lengths = bench.shape_lengths(cfg, shape)
        assert len(lengths) == cfg.shape_pairs * (cfg.shape_warmup + cfg.shape_steps)
        assert all(p + max(c, r) + 1 <= cfg.shape_max and min(p, c, r) >= 1 for p, c, r in lengths)
        prompts = [p for p, _, _ in lengths]
        completions = [c for _, c, _ in lengths] + [r for _, _, r in lengths]
        if ratio is None:
            assert set(prompts) == {cfg.shape_mean // 2}
            assert set(completions) == {cfg.shape_mean // 2 - 1}
            continue
        measured = statistics.mean(prompts) / statistics.mean(completions)
        assert measured == pytest.approx(ratio[0] / ratio[1], rel=0.15), shape
        spread = statistics.pstdev([math.log(x) for x in completions])
        assert spread == pytest.approx(bench.SHAPE_SIGMA, rel=0.25), shape


def test_shape_rows_tokenize_to_the_drawn_lengths_and_work_counts(bench):
    from trl_ipo.lab.tiny import build_tokenizer

    cfg = replace(bench.BenchConfig(), **bench.PRESETS["tiny"], shapes=["prompt-heavy"])
    tokenizer = build_tokenizer([bench.CHARSET], vocab_size=bench.BYTE_VOCAB)
    lengths = bench.shape_lengths(cfg, "prompt-heavy")
    for row, (p, c, r) in zip(bench.make_shape_rows(cfg, "prompt-heavy"), lengths, strict=True):
        assert len(tokenizer(row["prompt"])["input_ids"]) == p
        assert len(row["chosen"]) + 1 == c
        assert len(row["rejected"]) + 1 == r
    counts = {"non_embedding_parameters": 1000}
    work = bench.shape_work(cfg, "prompt-heavy", counts)
    n, real, padded, prompts = cfg.shape_pairs, 0, 0, 0
    for i in range(cfg.shape_warmup, cfg.shape_warmup + cfg.shape_steps):  # the timed steps' batches
        batch = lengths[i * n : (i + 1) * n]
        rows = [p + c for p, c, _ in batch] + [p + r for p, _, r in batch]
        real, padded, prompts = real + sum(rows), padded + 2 * n * max(rows), prompts + sum(p for p, _, _ in batch)
    assert work["real_tokens"] == pytest.approx(real / cfg.shape_steps)
    assert work["padded_tokens"] == pytest.approx(padded / cfg.shape_steps)
    assert work["shared_tokens"] == pytest.approx((real - prompts) / cfg.shape_steps)


def test_shape_checks_compare_the_best_layout_with_b(bench):
    def entry(samples, cpu):
        return {"samples_per_s": samples, "cpu_time_s": {"median": cpu}}

    shapes = {
        "prompt-heavy": {
            "variants": {"B": entry(1.0, 4.0), "A": entry(1.0, 4.0), "S": entry(1.6, 2.0), "SP": entry(1.4, 2.5)}
        }
    }
    memory = {"prompt-heavy": {n: {"peak_bytes": b} for n, b in (("B", 100), ("A", 100), ("S", 90), ("SP", 101))}}
    check = bench.shape_checks(shapes, memory)["prompt-heavy"]
    assert check["best"] == "S"
    assert check["met"] is True
    assert check["target"] == 1.5
    assert check["speedup_vs_B"] == pytest.approx({"S": 1.6, "SP": 1.4, "A": 1.0})
    assert check["cpu_speedup_vs_B"] == pytest.approx({"S": 2.0, "SP": 1.6})
    assert check["memory_vs_B"] == pytest.approx({"S": 0.9, "SP": 1.01})
    assert check["memory_met"] is False


def test_cuda_preset_shapes_are_qwen2_half_billion_bf16_up_to_2048(bench):
    cfg = replace(bench.BenchConfig(), **bench.PRESETS["cuda"], shapes=list(bench.SHAPES))
    assert (cfg.dtype, cfg.shape_pairs, cfg.shape_max) == ("bfloat16", 8, 2048)
    assert all(p + max(c, r) + 1 <= 2048 for shape in cfg.shapes for p, c, r in bench.shape_lengths(cfg, shape))
    with pytest.raises(SystemExit, match="--shape-variants has unknown"):
        bench.parse_args(["--shapes", "balanced", "--shape-variants", "B,X"])
    with pytest.raises(SystemExit, match="--only-shapes needs --shapes"):
        bench.parse_args(["--only-shapes"])
