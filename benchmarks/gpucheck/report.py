"""The check's output: entries of the ``checks`` list, ``cuda-check.json`` and the short ``cuda-check.md``."""

from __future__ import annotations

import json
import math
from pathlib import Path


def entry(name: str, max_rel_diff: float | None, tolerance: float, detail: str, passed: bool | None = None) -> dict:
    """One ``checks`` item: passed when ``max_rel_diff`` ≤ ``tolerance`` (unless ``passed`` is given)."""
    finite = max_rel_diff is not None and math.isfinite(max_rel_diff)
    if passed is None:
        passed = finite and max_rel_diff <= tolerance
    return {
        "name": name,
        "passed": bool(passed),
        "max_rel_diff": max_rel_diff if finite else None,
        "tolerance": tolerance,
        "detail": detail,
    }


def skipped(name: str, reason: str) -> dict:
    """A check that cannot run here (the reason says why); it does not fail the run."""
    return {"name": name, "passed": True, "skipped": True, "max_rel_diff": None, "tolerance": None, "detail": reason}


def failed(name: str, error: BaseException) -> dict:
    return {
        "name": name,
        "passed": False,
        "max_rel_diff": None,
        "tolerance": None,
        "detail": f"raised {type(error).__name__}: {str(error)[:800]}",
    }


def write(report: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "cuda-check.json", out / "cuda-check.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def _num(x, fmt="{:.3g}") -> str:
    return "–" if x is None else fmt.format(x)


def markdown(report: dict) -> str:
    v = report["versions"]
    gemm = report["gemm"]
    failed_names = [c["name"] for c in report["checks"] if not c["passed"]]
    lines = [
        f"# GPU check: {report['device']}",
        "",
        f"Mode: {report['mode']}. Created {report['created_utc']}, {report['wall_s']:.0f} s. "
        + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        f"GEMM: {gemm['label']}: **{report['gemm_tflops']:.3g} TFLOP/s** (the MFU denominator).",
        "",
        f"## Checks: {'all passed' if not failed_names else f'{len(failed_names)} FAILED'}",
        "",
        "| check | passed | max rel. diff | tolerance | detail |",
        "|---|---|---|---|---|",
    ]
    for c in report["checks"]:
        status = "skipped" if c.get("skipped") else ("yes" if c["passed"] else "**NO**")
        detail = c["detail"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {c['name']} | {status} | {_num(c['max_rel_diff'])} | {_num(c['tolerance'])} | {detail} |")
    lines += [
        "",
        "## Benchmark",
        "",
        "| model | workload | variant | attn | step (s) | samples/s | tokens/s | MFU | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report["bench"]:
        lines.append(
            f"| {b['model']} | {b['workload']} | {b['variant']} | {b['attn']} | {b['step_s']:.3f} | "
            f"{b['samples_per_s']:.2f} | {b['tokens_per_s']:,.0f} | {_num(b['mfu'], '{:.3f}')} | "
            f"{_num(b['peak_mem_gib'], '{:.3g}')} |"
        )
    for s in report.get("bench_skipped", []):
        variant, attn = s.get("variant", "all"), s.get("attn", "–")
        lines.append(f"| {s['model']} | {s['workload']} | {variant} | {attn} | skipped: {s['reason']} |")
    lines += [
        "",
        "| model | workload | best packed | × B samples/s | target | memory ≤ B |",
        "|---|---|---|---|---|---|",
    ]
    for t in report.get("targets", []):
        lines.append(
            f"| {t['model']} | {t['workload']} | {t['best']} | {t['speedup_vs_B']:.2f} | "
            f"≥ {t['target']}: {'met' if t['met'] else '**missed**'} | {'yes' if t['memory_met'] else '**no**'} |"
        )
    if report.get("profile"):
        p = report["profile"]
        lines += ["", f"Profile of one step ({p['model']}, {p['workload']}, {p['variant']}/{p['attn']}):", ""]
        lines += [f"- {row['op'][:90]}: {row['self_s'] * 1e3:.1f} ms ({row['calls']} calls)" for row in p["top"][:10]]
    return "\n".join(lines) + "\n"
