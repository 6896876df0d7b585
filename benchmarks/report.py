"""The report: ratios and target checks, machine information, the table printed to stderr and the Markdown
tables of docs/benchmarks.md (``--render``)."""

from __future__ import annotations

import os
import platform
import sys

from benchmarks.config import SHAPE_TARGETS, TARGETS, BenchConfig
from benchmarks.device import Device, _cpu_name


def shape_checks(shapes: dict, memory: dict | None) -> dict:
    """Best layout (S, Pf, SP) per shape against B: samples/s ratio (wall and CPU time) and peak memory."""
    checks = {}
    for shape, row in shapes.items():
        vs = row["variants"]
        if "B" not in vs:
            continue
        layouts = [n for n in ("S", "Pf", "SP") if n in vs]
        if not layouts:
            continue
        best = max(layouts, key=lambda n: vs[n]["samples_per_s"])
        cpu = {n: vs["B"]["cpu_time_s"]["median"] / vs[n]["cpu_time_s"]["median"] for n in layouts}
        entry = {
            "best": best,
            "speedup_vs_B": {n: vs[n]["samples_per_s"] / vs["B"]["samples_per_s"] for n in layouts + ["A"] if n in vs},
            "cpu_speedup_vs_B": cpu,
            "speedup_vs_A": (
                {n: vs[n]["samples_per_s"] / vs["A"]["samples_per_s"] for n in layouts} if "A" in vs else None
            ),
        }
        target = SHAPE_TARGETS.get(shape)
        if target is not None:
            entry["target"] = target
            entry["met"] = entry["speedup_vs_B"][best] >= target
        mem = (memory or {}).get(shape)
        if mem and "B" in mem:
            entry["memory_vs_B"] = {n: mem[n]["peak_bytes"] / mem["B"]["peak_bytes"] for n in layouts if n in mem}
            entry["memory_met"] = all(v <= 1.0 for v in entry["memory_vs_B"].values())
        checks[shape] = entry
    return checks


def render_shapes(report: dict) -> str:
    """The workload-shape tables of docs/benchmarks.md."""
    shapes, memory = report.get("shapes") or {}, report.get("shape_memory") or {}
    if not shapes:
        return ""
    with_mfu = any(v.get("mfu") is not None for row in shapes.values() for v in row["variants"].values())
    head = (
        "| shape | variant | samples/s | × B | × A | tokens/s | median step (s) | CPU s/step | "
        + ("MFU | " if with_mfu else "")
        + "peak memory (MiB) | × B memory |"
    )
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, row in shapes.items():
        vs, mem = row["variants"], memory.get(shape, {})
        for name, v in vs.items():
            x_b = v["samples_per_s"] / vs["B"]["samples_per_s"] if "B" in vs else None
            x_a = v["samples_per_s"] / vs["A"]["samples_per_s"] if "A" in vs else None
            m = mem.get(name)
            mb = m["peak_bytes"] / mem["B"]["peak_bytes"] if m and "B" in mem else None
            cells = [
                shape,
                name,
                f"{v['samples_per_s']:.3f}",
                "–" if x_b is None else f"{x_b:.2f}",
                "–" if x_a is None else f"{x_a:.2f}",
                f"{v['tokens_per_s']:,.0f}",
                f"{v['step_time_s']['median']:.3f}",
                f"{v['cpu_time_s']['median']:.2f}",
            ]
            if with_mfu:
                cells.append("–" if v["mfu"] is None else f"{v['mfu']:.3f}")
            cells += ["–" if m is None else f"{m['peak_bytes'] / 2**20:,.0f}", "–" if mb is None else f"{mb:.2f}"]
            out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        "| shape | tokens in the padded layout (real / with padding) | tokens with shared prompts "
        "| best layout | its samples/s × B (wall / CPU time) | target | peak memory ≤ B |",
        "|---|---|---|---|---|---|---|",
    ]
    for shape, check in (report.get("shape_checks") or {}).items():
        work = shapes[shape]["work"]
        best = check["best"]
        target = check.get("target")
        verdict = "–" if target is None else f"≥ {target}: {'met' if check['met'] else '**missed**'}"
        memory_ok = {True: "yes", False: "**no**", None: "–"}[check.get("memory_met")]
        out.append(
            f"| {shape} | {work['real_tokens']:,.0f} / {work['padded_tokens']:,.0f} | "
            f"{work['shared_tokens']:,.0f} | {best} | {check['speedup_vs_B'][best]:.2f} / "
            f"{check['cpu_speedup_vs_B'][best]:.2f} | {verdict} | {memory_ok} |"
        )
    return "\n".join(out)


def ratios(variants: dict, figure: str = "step_time_s") -> dict:
    def r(a, b):
        if a in variants and b in variants:
            return variants[a][figure]["median"] / variants[b][figure]["median"]
        return None

    return {
        "A/B": r("A", "B"),
        "A_prime/A": r("A_prime", "A"),
        "A/F": r("A", "F"),
        "P/A": r("P", "A"),
        "F_metrics/F": r("F_metrics", "F"),
        "A/F_metrics": r("A", "F_metrics"),
    }


def target_checks(ratio: dict, memory: dict | None) -> dict:
    checks = {
        k: {"value": v, "max": TARGETS[k], "met": v <= TARGETS[k]}
        for k, v in ratio.items()
        if v is not None and k in TARGETS
    }
    if memory and "A" in memory and "B" in memory:
        a, b = memory["A"]["peak_bytes"], memory["B"]["peak_bytes"]
        checks["memory A<=B"] = {"A_bytes": a, "B_bytes": b, "value": a / b, "max": 1.0, "met": a <= b}
    return checks


def machine_info(device: Device, cfg: BenchConfig) -> dict:
    import accelerate
    import torch
    import transformers
    import trl

    import trl_ipo

    return {
        "device": device.kind,
        "device_name": device.name,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "peak_tflops": device.peak_tflops,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "accelerate": accelerate.__version__,
            "trl_ipo": getattr(trl_ipo, "__version__", None),
        },
    }


def print_table(report: dict) -> None:
    lines = [f"{'variant':8} {'step s':>9} {'iter s':>9} {'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak MiB':>9}"]
    memory = report.get("memory") or {}
    for name, v in report["variants"].items():
        mem = memory.get(name, {}).get("peak_bytes")
        mfu = v["mfu"]
        lines.append(
            f"{name:8} {v['step_time_s']['median']:9.4f} {v['iteration_time_s'].get('median', float('nan')):9.4f} "
            f"{v['tokens_per_s']:9.1f} {v['achieved_tflops']:8.4f} {'-' if mfu is None else f'{mfu:6.3f}':>6} "
            f"{'-' if mem is None else f'{mem / 2**20:9.1f}':>9}"
        )
    for key, check in report["targets"].items():
        lines.append(f"{key:12} {check['value']:.3f} (target <= {check['max']}) {'met' if check['met'] else 'MISSED'}")
    for row in report["scan"]:
        lines.append(
            f"scan seq {row['seq']:5}: "
            + ", ".join(f"{n} {row['variants'][n]['step_time_s']['median']:.4f} s" for n in row["variants"])
        )
    for shape, check in (report.get("shape_checks") or {}).items():
        speed = ", ".join(f"{n} {x:.2f}x" for n, x in check["speedup_vs_B"].items())
        lines.append(f"shape {shape:17} samples/s vs B: {speed}; memory ok: {check.get('memory_met')}")
    print("\n".join(lines), file=sys.stderr)


def render_markdown(report: dict) -> str:
    """The tables of docs/benchmarks.md, from a benchmark JSON."""
    memory = report.get("memory") or {}

    def mib(n_bytes: int) -> str:
        return f"{n_bytes / 2**20:,.0f}"

    out = [
        "| variant | what | median step (s) | min–max (s) | iteration (s) | CPU s/step (system) | tokens/s "
        "| TFLOP/s | "
        + ("MFU | " if any(v["mfu"] is not None for v in report["variants"].values()) else "")
        + "peak memory (MiB) | added by the variant (MiB) |",
    ]
    with_mfu = "MFU" in out[0]
    out.append("|" + "---|" * (out[0].count("|") - 1))
    for name, v in report["variants"].items():
        step, it, mem = v["step_time_s"], v["iteration_time_s"], memory.get(name)
        cells = [
            name.replace("_prime", "′"),
            v["label"],
            f"{step['median']:.3f}",
            f"{step['min']:.3f}–{step['max']:.3f}",
            f"{it['median']:.3f}" if it else "–",
            f"{v['cpu_time_s']['median']:.2f} ({v['sys_time_s']['median']:.2f})" if v.get("cpu_time_s") else "–",
            f"{v['tokens_per_s']:,.0f}",
            f"{v['achieved_tflops']:.4f}",
        ]
        if with_mfu:
            cells.append("–" if v["mfu"] is None else f"{v['mfu']:.3f}")
        cells += [mib(mem["peak_bytes"]) if mem else "–", mib(mem["added_bytes"]) if mem else "–"]
        out.append("| " + " | ".join(cells) + " |")
    cpu_ratios = report.get("cpu_time_ratios") or {}

    def cpu(key: str) -> str:
        return f"{cpu_ratios[key]:.3f}" if cpu_ratios.get(key) is not None else "–"

    out += ["", "| ratio | measured (wall) | on CPU time | target | |", "|---|---|---|---|---|"]
    for key, check in report["targets"].items():
        label = key.replace("_prime", "′")
        value = f"{check['value']:.3f}"
        verdict = "met" if check["met"] else "**missed**"
        on_cpu = cpu(key) if key in cpu_ratios else "–"
        out.append(f"| {label} | {value} | {on_cpu} | ≤ {check['max']} | {verdict} |")
    for key, value in report["ratios"].items():
        if key not in report["targets"] and value is not None:
            out.append(f"| {key.replace('_prime', '′')} | {value:.3f} | {cpu(key)} | (diagnostic) | |")
    if "P" in report["variants"] and "precompute_s" in report["variants"]["P"]:
        p = report["variants"]["P"]
        out += [
            "",
            f"P's precompute: {p['precompute_s']:.2f} s for {p['precompute_pairs']} pairs "
            f"({p['precompute_s'] / p['precompute_pairs']:.3f} s per pair, done once before training).",
        ]
    if report["scan"]:
        names = list(report["scan"][0]["variants"])
        out += [
            "",
            "| sequence | tokens/step | "
            + " | ".join(f"{n} step (s)" for n in names)
            + " | "
            + " | ".join(f"{n} tokens/s" for n in names)
            + " |",
            "|" + "---|" * (2 + 2 * len(names)),
        ]
        for row in report["scan"]:
            vs = row["variants"]
            out.append(
                f"| {row['seq']} | {vs[names[0]]['tokens_per_step']:,} | "
                + " | ".join(f"{vs[n]['step_time_s']['median']:.3f}" for n in names)
                + " | "
                + " | ".join(f"{vs[n]['tokens_per_s']:,.0f}" for n in names)
                + " |"
            )
    return "\n".join(out)
