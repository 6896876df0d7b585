"""Every fenced Python and shell snippet in README.md and docs/*.md runs, on a tiny local model and data.

The files are found by glob, so a new page is covered as soon as it exists. The convention (docs/usage.md,
"Snippets in these docs"):

* ``python`` blocks run in order, one namespace per page, in a fresh working folder per page. Names a reader brings
  are predefined: ``ds``, ``eval_ds`` (preference rows with ``prompt``, ``chosen``, ``rejected``, ``wins``,
  ``losses``, ``score_chosen``, ``score_rejected``), ``train``/``evaluation`` (the same two), ``tok``, ``model``,
  ``lora``, ``prompts`` (prompt-only rows), ``args`` (an ``IPOConfig``), ``chosen_logratios``,
  ``rejected_logratios``, ``q``.
* ``bash``/``sh``/``shell`` blocks run with ``bash -eo pipefail`` in the same folder, the virtualenv first on
  ``PATH``; an unlabelled block whose first command is a known command line (``python``, ``trl-ipo``, ...) is shell.
* The text ``path/or/model`` stands for a model folder and ``path/to/pairs.jsonl`` for a preference file; both are
  replaced by a tiny model and 32 rows built locally (what ``trl-ipo tiny-model DIR --pairs 32`` writes). A file a
  snippet presents as the reader's own DeepSpeed config, ``my_ds.json``, exists in the working folder.
* ``trl-ipo`` command lines run in the test's own process (TRL is imported once), everything else in bash.
* A ``yaml`` block must parse; one whose first line is ``# NAME.yaml`` is written to NAME.yaml in the page's folder.
* In a ``diff`` block, the ``import`` lines of both sides run.
* A snippet that cannot run here says so in its first line: ``# docs-test: skip (reason)``; it is skipped with that
  reason.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = re.compile(r"^\s*#\s*docs-test:\s*skip\s*\((?P<reason>.+)\)\s*$")
SHELL_LANGS = {"bash", "sh", "shell", "console"}
COMMANDS = (
    "python ",
    "python3 ",
    "trl-ipo",
    "bash ",
    "pip ",
    "accelerate ",
    "deepspeed ",
    "torchrun ",
    "wandb ",
    "srun ",
    "sbatch ",
    ". .venv",
)


def fenced_blocks(text: str):
    """(line number, language, body) of every fenced block, backtick or tilde fences, nested in lists or not."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^\s*{fence[0]}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        yield i + 1, lang, "\n".join(body) + "\n"
        i = j + 1


def kind_of(lang: str, body: str) -> str | None:
    if lang in ("python", "py", "python3"):
        return "python"
    if lang in SHELL_LANGS:
        return "shell"
    if lang in ("yaml", "yml"):
        return "yaml"
    if lang == "diff":
        return "diff"
    if lang == "":
        first = next((ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
        if first.startswith(COMMANDS):
            return "shell"
    return None


def skip_reason(body: str) -> str | None:
    first = next((ln for ln in body.splitlines() if ln.strip()), "")
    m = SKIP_MARK.match(first)
    return m.group("reason") if m else None


def collect():
    cases = []
    for path in PAGES:
        page = str(path.relative_to(ROOT))
        for line, lang, body in fenced_blocks(path.read_text()):
            kind = kind_of(lang, body)
            if kind is not None:
                cases.append(pytest.param(page, line, kind, body, id=f"{page}:{line}"))
    return cases


CASES = collect()


# --------------------------------------------------------------------------------------------------- the fixtures
@pytest.fixture(scope="module")
def placeholders(tmp_path_factory, tiny_dir):
    """The tiny model folder (``path/or/model``) and 32 preference rows (``path/to/pairs.jsonl``)."""
    from trl_ipo.lab.tiny import make_pairs

    data = tmp_path_factory.mktemp("docs-data") / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(32, seed=1, preference=True)))
    return {"path/or/model": tiny_dir, "path/to/pairs.jsonl": str(data)}


def substitute(body: str, placeholders: dict) -> str:
    for name, value in placeholders.items():
        body = body.replace(name, value)
    return body


def reader_names(tiny_dir: str) -> dict:
    """What a reader brings to a Python snippet (see the module docstring)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ipo import IPOConfig
    from trl_ipo.lab.tiny import make_pairs

    def rows(n, seed):
        out = make_pairs(n, seed=seed)
        for i, r in enumerate(out):
            r.update(wins=1 + i % 4, losses=i % 3, score_chosen=0.1 * (i % 5), score_rejected=0.05 * (i % 7))
        return Dataset.from_list(out)

    ds, eval_ds = rows(16, 1), rows(8, 2)
    torch.manual_seed(0)
    return {
        "ds": ds,
        "eval_ds": eval_ds,
        "train": ds,
        "evaluation": eval_ds,
        "tok": AutoTokenizer.from_pretrained(tiny_dir),
        "model": AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32),
        "lora": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        "prompts": Dataset.from_list([{"prompt": r["prompt"]} for r in make_pairs(4, seed=3)]),
        "chosen_logratios": torch.tensor([0.3, -0.1, 0.2]),
        "rejected_logratios": torch.tensor([0.1, 0.2, -0.4]),
        "q": torch.tensor([1.0, 0.5, 0.8]),
        "args": IPOConfig(output_dir="out", report_to="none"),
    }


_PAGE_STATE: dict[str, tuple[dict, Path]] = {}


def page_state(page: str, tmp_path_factory, tiny_dir) -> tuple[dict, Path]:
    """One namespace and one working folder per page, shared by its snippets in order."""
    if page not in _PAGE_STATE:
        folder = tmp_path_factory.mktemp("page-" + re.sub(r"\W", "-", page))
        for name in ("scripts", "tests", "docs"):  # snippets name repository files relatively
            (folder / name).symlink_to(ROOT / name)
        (folder / "my_ds.json").write_text((ROOT / "trl_ipo" / "configs" / "zero3.json").read_text())
        module = types.ModuleType("docs_" + re.sub(r"\W", "_", page))  # dataclasses look their module up
        sys.modules[module.__name__] = module
        module.__dict__.update(reader_names(tiny_dir))
        _PAGE_STATE[page] = (module.__dict__, folder)
    return _PAGE_STATE[page]


def shell_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    return env


# ------------------------------------------------------------------------------------------------------ the test
@pytest.mark.parametrize(("page", "line", "kind", "body"), CASES)
def test_snippet_runs(page, line, kind, body, placeholders, tiny_dir, tmp_path_factory, monkeypatch):
    reason = skip_reason(body)
    if reason is not None:
        pytest.skip(f"{page}:{line}: {reason}")
    import torch

    namespace, folder = page_state(page, tmp_path_factory, tiny_dir)
    monkeypatch.chdir(folder)
    threads, environ = torch.get_num_threads(), dict(os.environ)
    torch.set_num_threads(1)  # tiny models run fastest on one thread
    try:
        run_snippet(kind, substitute(body, placeholders), f"{page}:{line}", namespace, folder)
    finally:  # a snippet may set variables (e.g. HF_TOKEN) or threads: none of it reaches the other tests
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(environ)


def run_snippet(kind: str, code: str, where: str, namespace: dict, folder: Path) -> None:
    if kind == "python":
        exec(compile(code, where, "exec"), namespace)  # noqa: S102 — running the documentation is the test
    elif kind == "diff":
        changed = [ln[1:].strip() for ln in code.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
        imports = [ln for ln in changed if ln.startswith(("import ", "from "))]  # both sides must import
        for statement in imports:
            exec(compile(statement, where, "exec"), {})  # noqa: S102
    elif kind == "yaml":
        import yaml

        values = yaml.safe_load(code)
        first = code.splitlines()[0].strip()
        m = re.match(r"^#\s*(\S+\.ya?ml)$", first)
        if m:
            assert isinstance(values, dict), f"{where}: {m.group(1)} is not a mapping"
            (folder / m.group(1)).write_text(code)
    else:
        run_shell(code, folder, where)


def shell_commands(code: str) -> list[str]:
    """The snippet's commands: backslash continuations joined, a here-document kept with its command."""
    commands, lines, i = [], code.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if heredoc:
            body = []
            while i + 1 < len(lines) and lines[i + 1].strip() != heredoc.group(1):
                i += 1
                body.append(lines[i])
            i += 1
            line = "\n".join([line, *body, heredoc.group(1)])
        if line.strip() and not line.strip().startswith("#"):
            commands.append(line)
        i += 1
    return commands


IN_PROCESS = re.compile(r"^(trl-ipo|python -m trl_ipo)\s")


def run_shell(code: str, folder: Path, where: str) -> None:
    """``trl-ipo`` command lines run in this process (the libraries are imported once); the rest in bash."""
    import shlex

    from trl_ipo.cli import main

    pending: list[str] = []

    def flush():
        if pending:
            done = subprocess.run(
                ["bash", "-eo", "pipefail", "-c", "\n".join(pending)],
                cwd=folder,
                env=shell_env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
            output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            assert done.returncode == 0, f"{where} exited {done.returncode}:\n{output}"
            pending.clear()

    for command in shell_commands(code):
        bare = re.sub(r"\s+#.*$", "", command) if "\n" not in command else command  # a trailing comment
        if IN_PROCESS.match(bare) and not re.search(r"[|;&<>`$'\"]", bare):
            flush()
            argv = shlex.split(bare)
            argv = argv[1:] if argv[0] == "trl-ipo" else argv[3:]
            try:
                rc = main(argv)
            except SystemExit as exit_:
                rc = exit_.code or 0
            assert rc == 0, f"{where}: `{command}` returned {rc}"
        else:
            pending.append(command)
    flush()


# -------------------------------------------------------------------------------------------- the convention
def test_every_page_is_scanned_and_snippets_are_found():
    """The glob finds README.md and every docs page, and the extractor sees the snippets a reader sees."""
    pages = {str(p.relative_to(ROOT)) for p in PAGES}
    assert {"README.md", "docs/usage.md", "docs/cli.md"} <= pages
    assert {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")} <= pages
    text = "intro\n```python\nx = 1\n```\n\n1. item\n\n   ```bash\n   echo hi\n   ```\n```\nplain\n```\n"
    blocks = list(fenced_blocks(text))
    assert [(b[1], b[2]) for b in blocks] == [("python", "x = 1\n"), ("bash", "echo hi\n"), ("", "plain\n")]
    assert kind_of("", "python scripts/x.py\n") == "shell"
    assert kind_of("", "Δ = ρ(y_w) − ρ(y_l)\n") is None
    assert skip_reason("# docs-test: skip (needs 8 GPUs)\nrun\n") == "needs 8 GPUs"


def test_marked_python_snippets_parse():
    """A snippet marked as skipped is still valid Python (it is read, even if it cannot run here)."""
    for case in CASES:
        page, line, kind, body = case.values
        first = next((ln for ln in body.splitlines() if ln.strip()), "")
        if kind == "python" and SKIP_MARK.match(first):
            ast.parse(body, filename=f"{page}:{line}")


# ------------------------------------------------------------------------------------ the DPOConfig field table
@pytest.mark.compat
def test_usage_lists_the_decision_for_every_dpo_config_field():
    """Every field DPOConfig adds to TrainingArguments has a decision, and docs/usage.md shows the same table."""
    import dataclasses

    from transformers import TrainingArguments
    from trl import DPOConfig

    from trl_ipo.dpo_fields import DPO_FIELDS, decision_table

    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    added = [f.name for f in dataclasses.fields(DPOConfig) if f.name not in base or f.name == "learning_rate"]
    assert sorted(added) == sorted(DPO_FIELDS), set(added) ^ set(DPO_FIELDS)
    assert decision_table() in (ROOT / "docs" / "usage.md").read_text()
