"""``trl-ipo train``: IPO training with the arguments of ``trl dpo``, plus the IPO fields.

The arguments are TRL's own dataclasses — ``ScriptArguments`` (dataset flags), ``ModelConfig`` (model, dtype, LoRA,
quantisation) and ``DatasetMixtureConfig`` (the ``datasets:`` YAML list) — with :class:`~trl_ipo.config.IPOConfig`
in place of ``DPOConfig``, parsed by TRL's ``TrlParser``: ``--config run.yaml`` sets values, flags on the command line
override them. So a ``trl dpo`` command line or YAML runs unchanged, except where it selects a DPO-only loss.

Everything a user can get wrong — flags, YAML fields and their types, field values, the model path, the dataset
path, its splits, columns, rows and preference values, the output folder, the checkpoint to resume from — is checked
before training and reported as one line naming the problem, with exit status 2 and no traceback
(:mod:`trl_ipo.errors`). A bad row of a streamed dataset is reported the same way when it arrives.
:func:`run` (the training itself) is shared with ``scripts/train_ipo.py``.
"""

from __future__ import annotations

import argparse
import difflib
import numbers
import os
import sys
from collections.abc import Sequence

from .. import _compat, datasets_io
from ..cli import check_repeated_flags, command_summary
from ..datasets_io import (
    check_preference_columns,
    check_writable_folder,
    is_local_reference,
    load_preference_dataset,
    select_split,
)
from ..errors import InputError, one_line, report
from ..redact import MASK, is_secret_name, scrub_argv

HELP = command_summary("train")

PROG = "trl-ipo train"


def _parser_class():
    """TRL's ``TrlParser`` with errors raised as :class:`InputError` and ``--deepspeed`` short names resolved."""
    from trl import TrlParser

    class _Parser(TrlParser):
        def error(self, message):  # argparse's error() prints the whole usage (hundreds of flags) and exits
            raise InputError(message)

        def set_defaults_with_config(self, **kwargs):
            if isinstance(kwargs.get("deepspeed"), str):
                kwargs["deepspeed"] = resolve_launch_config(kwargs["deepspeed"], "deepspeed")
            return super().set_defaults_with_config(**kwargs)

    return _Parser


def make_parser(prog: str = PROG):
    """The argument parser of ``trl-ipo train`` and ``scripts/train_ipo.py``."""
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments

    from ..config import IPOConfig

    return _parser_class()(
        (ScriptArguments, IPOConfig, ModelConfig, DatasetMixtureConfig),
        prog=prog,
        usage=f"{prog} [--config run.yaml] [--model_name_or_path M] [--dataset_name D] [options]",
        description=_description(IPOConfig),
        formatter_class=_HelpFormatter,
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's layout (the IPO flag table) and show defaults, as HfArgumentParser does."""


def _description(config_class) -> str:
    from ..config import ipo_setting_names

    fields = config_class.__dataclass_fields__
    lines = [
        "Train a causal LM with IPO (Azar et al. 2023). Takes the arguments of `trl dpo` (script, training, model",
        "and LoRA flags; `--config run.yaml` with command-line overrides) plus the IPO fields:",
        "",
    ]
    for name in ipo_setting_names():  # the fields IPOConfig adds to (or restricts in) DPOConfig, listed first
        help_text = " ".join(fields[name].metadata.get("help", "").split())
        lines.append(f"  --{name:<19} {help_text}")
    lines += ["", "--deepspeed also takes a packaged config's short name (e.g. zero3). All options:"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- parsing
def resolve_launch_config(value: str, kind: str) -> str:
    """A packaged DeepSpeed/accelerate config's short name (e.g. ``zero3``) → its path; paths pass unchanged."""
    if not value or os.path.isfile(value) or value.lstrip().startswith("{"):
        return value
    from ..distributed import resolve_config

    try:
        return str(resolve_config(value, kind))
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise InputError(f"--{kind} {value!r}: {err}") from None


def _resolve_deepspeed_flag(argv: list[str]) -> list[str]:
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--deepspeed" and i + 1 < len(argv):
            argv[i + 1] = resolve_launch_config(argv[i + 1], "deepspeed")
        elif arg.startswith("--deepspeed="):
            argv[i] = "--deepspeed=" + resolve_launch_config(arg.split("=", 1)[1], "deepspeed")
    return argv


def parse_args(argv: Sequence[str], parser=None):
    """``(script_args, training_args, model_args, dataset_args)`` from ``argv``, or :class:`InputError`.

    Unknown flags and unknown YAML fields are reported (with the nearest known name) before any dataclass is built,
    so a typo is never hidden behind a later validation error.
    """
    parser = parser or make_parser()
    check_repeated_flags(parser, list(argv))  # `--beta 0.1 --beta 0.9` is an error, not "the last one wins"
    argv = _resolve_deepspeed_flag(list(argv))
    config_path = _config_path(argv)
    known = _known_options(parser)
    if config_path is not None:
        values = _read_config(config_path)
        unknown_fields = [key for key in values if key != "env" and key not in known]
        if unknown_fields:
            raise InputError(_unknown(f"unknown fields in {config_path}", unknown_fields, known, dashes=""))
        _check_config_types(parser, values, config_path)
        _check_field_types(parser, values, config_path)
    _check_field_types(parser, _json_flags(argv), None)
    command_line = list(argv)
    if config_path is not None:
        at = command_line.index("--config")
        del command_line[at : at + 2]
    _, unknown_flags = argparse.ArgumentParser.parse_known_args(parser, command_line)
    if unknown_flags:
        raise InputError(_unknown("unrecognized arguments", unknown_flags, known, dashes="--"))
    try:
        *parsed, leftover = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except InputError:
        raise
    except (ValueError, TypeError, OSError) as err:  # a dataclass rejected a value (IPOConfig, TrainingArguments)
        message = one_line(err)
        if "bf16" in message and "bf16 false" not in message:  # transformers' own bf16 error: say what to pass
            message += " (on a host without a bf16 GPU pass --bf16 false, or `bf16: false` in the YAML)"
        raise InputError(message) from None
    if leftover:
        raise InputError(_unknown("unrecognized arguments", leftover, known, dashes="--"))
    return tuple(parsed)


MAX_CONFIG_BYTES = 1024 * 1024  # a run's YAML is a few KiB; a larger file is refused unread


def _yaml_loader():
    """``yaml.SafeLoader`` that refuses aliases (``*name``): a few lines of nested aliases expand to gigabytes
    (the "billion laughs"), which would then be recorded in every training_args.json."""
    import yaml

    class _NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise InputError(
                    f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not accepted; "
                    "write the value out"
                )
            return super().compose_node(parent, index)

    return _NoAliasLoader


def _read_config(config_path: str) -> dict:
    import yaml

    if not os.path.isfile(config_path):
        raise InputError(f"config file not found: {config_path!r}")
    size = os.path.getsize(config_path)
    if size > MAX_CONFIG_BYTES:
        raise InputError(
            f"config file {config_path!r} is {size} bytes, larger than the {MAX_CONFIG_BYTES // 1024} KiB a run "
            "configuration may have (MAX_CONFIG_BYTES); not read"
        )
    try:
        with open(config_path, encoding="utf-8") as f:
            loader = _yaml_loader()(f)  # a SafeLoader that also refuses aliases: plain data only
            try:
                values = loader.get_single_data()
            finally:
                loader.dispose()
    except InputError as err:
        raise InputError(f"config file {config_path!r}: {err}") from None
    except RecursionError:
        raise InputError(f"config file {config_path!r} nests too deeply") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"config file {config_path!r} is not valid YAML: {one_line(err)}") from None
    if not isinstance(values, dict):
        raise InputError(f"config file {config_path!r} must hold a YAML mapping of field: value")
    return values


def _check_config_types(parser, values: dict, config_path: str) -> None:
    """A YAML value of the wrong type for a number or true/false field (a list where a number belongs) is an error
    naming the file and the field. argparse converts only string defaults; anything else would reach the
    dataclasses as is and fail late, or never.
    """
    actions = {action.dest: action for action in parser._actions}
    for key, value in values.items():
        action = actions.get(key)
        if action is None or value is None or isinstance(value, str):
            continue  # strings are converted (and checked) by argparse itself
        takes_list = action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 0
        for element in value if takes_list and isinstance(value, list) else [value]:
            if action.type in (int, float) and (isinstance(element, bool) or not isinstance(element, numbers.Real)):
                expected = "a number" if action.type is float else "a whole number"
            elif action.type is int and not float(element).is_integer():
                expected = "a whole number"
            elif getattr(action.type, "__name__", "") == "string_to_bool" and not isinstance(element, bool):
                expected = "true or false"
            else:
                continue
            raise InputError(
                f"config file {config_path!r}: field {key!r} must be {expected}"
                f"{' (one per list item)' if takes_list else ''}, got {type(element).__name__} {element!r}"
            )


def _check_field_types(parser, values: dict, config_path: str | None) -> None:
    """Every value against its field's annotation, at any depth (:mod:`trl_ipo.field_types`); ``env`` must map
    names to text or numbers. The error names the field (``model_init_kwargs.dtype``) and the value (secrets
    masked)."""
    from ..field_types import Problem, field_hints, type_problem

    hints = field_hints(parser.dataclass_types)
    for key, value in values.items():
        if key == "env":
            bad = not isinstance(value, dict) or any(
                not isinstance(k, str) or isinstance(v, (dict, list)) for k, v in value.items()
            )
            problem = Problem("env", "a mapping of variable names to text", value) if bad else None
        elif key in hints:
            problem = type_problem(key, hints[key], value)
        else:
            continue
        if problem is not None:
            shown = MASK if any(is_secret_name(part) for part in _path_parts(problem.path)) else problem.value
            where = f"config file {config_path!r}: field {problem.path!r}" if config_path else f"--{problem.path}"
            raise InputError(f"{where} must be {problem.expected}, got {type(problem.value).__name__} {_short(shown)}")


def _path_parts(path: str) -> list[str]:
    return [p for p in path.replace("[", ".").replace("]", "").split(".") if p]


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_flags(argv: list[str]) -> dict:
    """``{field: text}`` of the ``--*_kwargs`` flags of a command line (JSON objects, checked like YAML values)."""
    from ..field_types import is_json_kwargs_field

    found = {}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        name = name[2:] if name.startswith("--") else ""
        if is_json_kwargs_field(name):
            if eq:
                found[name] = value
            elif i + 1 < len(argv):
                found[name] = argv[i + 1]
    return found


def _config_path(argv: list[str]) -> str | None:
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise InputError("--config needs the path of a YAML file")
        return argv[i + 1]
    return None


def _known_options(parser) -> list[str]:
    return sorted({action.dest for action in parser._actions if action.dest != "help"})


def _unknown(what: str, items: list[str], known: list[str], dashes: str) -> str:
    described = []
    for item in items:
        name = item.split("=", 1)[0].lstrip("-")
        if not item.startswith("-") and dashes:
            described.append(repr(item))
            continue
        close = difflib.get_close_matches(name.replace("-", "_"), known, n=1)
        hint = f" (did you mean {dashes}{close[0]}?)" if close else ""
        described.append(f"{dashes}{name}{hint}")
    return f"{what}: {', '.join(described)}"


# ----------------------------------------------------------------------------------------------- checking
def check_model(model_args, training_args) -> None:
    """Fail early, with the path or hub id, when the model cannot be found."""
    datasets_io.check_model(
        model_args.model_name_or_path,
        model_args.model_revision,
        training_args.trust_remote_code,
        "--model_name_or_path",
    )


def check_chat_template(model_args, training_args, dataset) -> None:
    """Chat-message rows need a tokenizer with a chat template (TRL would fail on the first row, with a traceback)."""
    from trl.data_utils import is_conversational

    first = next(iter(dataset), None)
    if first is None or not is_conversational(first):
        return
    from transformers import AutoTokenizer

    name = model_args.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(
        name, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError(
            f"the dataset holds chat messages but the tokenizer of --model_name_or_path {name!r} has no chat template; "
            "use a chat model's tokenizer, or plain-text prompt/chosen/rejected columns"
        )


def check_output_dir(training_args) -> None:
    """The output folder exists or can be created, and a file can be written in it."""
    check_writable_folder(training_args.output_dir, "--output_dir")


def check_not_the_model_folder(training_args, model_args) -> None:
    """``--output_dir`` is not the base model's folder (after resolving links and ``~``): saving there would
    overwrite the model being trained from."""
    if is_local_reference(model_args.model_name_or_path or ""):
        model = os.path.realpath(os.path.expanduser(model_args.model_name_or_path))
        if os.path.realpath(os.path.expanduser(training_args.output_dir)) == model:
            raise InputError(
                f"--output_dir {training_args.output_dir!r} is the folder of --model_name_or_path "
                f"{model_args.model_name_or_path!r}; saving there would overwrite the base model. Choose another "
                "--output_dir"
            )


TORCH_DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16", "float64", "float", "half", "double")


def check_model_init_kwargs(model_init_kwargs: dict, flag: str = "--model_init_kwargs") -> None:
    """``dtype`` (or ``torch_dtype``) names a floating torch dtype or ``auto``; a flash-attention implementation is
    installed and usable here. Each error names the key and the value."""
    import torch

    for key in ("dtype", "torch_dtype"):
        value = model_init_kwargs.get(key)
        if value is None or isinstance(value, torch.dtype):
            continue
        name = value.removeprefix("torch.") if isinstance(value, str) else None
        if name not in TORCH_DTYPE_NAMES:
            raise InputError(
                f"{flag}: {key}={value!r} is not a dtype; use one of {list(TORCH_DTYPE_NAMES[:4])} (or leave it unset)"
            )
    check_attn_implementation(model_init_kwargs.get("attn_implementation"), f"{flag} attn_implementation")


def check_attn_implementation(value, flag: str = "--attn_implementation") -> None:
    """``flash_attention_2``/``_3`` need their package (and a CUDA GPU): say so before the model is loaded."""
    if not isinstance(value, str) or not value.startswith("flash_attention_"):
        return
    from transformers import utils

    available = getattr(utils, f"is_{value.replace('flash_attention_', 'flash_attn_')}_available", None)
    if available is not None and not available():
        package = {"flash_attention_2": "flash-attn", "flash_attention_3": "flash-attn 3"}.get(value, "flash-attn")
        raise InputError(
            f"{flag} {value!r}: it is not available here (it needs the {package} package and a supported CUDA "
            "GPU); install it, or use 'sdpa' or 'eager'"
        )


def check_streaming_options(script_args, training_args) -> None:
    """A stream cannot be read twice up front, which precomputing the reference log-probs needs."""
    if script_args.dataset_streaming and training_args.precompute_ref_log_probs:
        raise InputError(
            "--dataset_streaming true cannot be combined with --precompute_ref_log_probs true: the reference "
            "log-probs are precomputed over the whole dataset before training, which a stream does not allow; "
            "drop one of them"
        )


def resolve_resume(training_args) -> None:
    """``--resume_from_checkpoint true`` means the newest complete checkpoint in ``output_dir``, not a folder named
    "true"; ``false``/``none`` means no resume; any other value is a checkpoint folder.

    The flag is normalised to ``True``, ``None`` or a path (``IPOTrainer.train`` resolves ``True`` and warns about
    incomplete checkpoints, see :mod:`trl_ipo.checkpoints`), and checked here, so that nothing to resume from is
    reported before training, naming the folder.
    """
    from .. import checkpoints

    value = training_args.resume_from_checkpoint
    if isinstance(value, str) and value.strip().lower() in ("none", "null"):
        value = None
    value = checkpoints.parse_resume_flag(value)
    training_args.resume_from_checkpoint = value
    if value is None:
        return
    if value is True:
        folder = training_args.output_dir
        newest, skipped = checkpoints.newest_complete_checkpoint(folder) if os.path.isdir(folder) else (None, [])
        if newest is None:
            found = f" ({len(skipped)} incomplete)" if skipped else ""
            raise InputError(
                f"--resume_from_checkpoint true: there is no complete checkpoint-* folder in --output_dir {folder!r} "
                f"to resume from{found}"
            )
    elif not os.path.isdir(os.path.expanduser(value)):
        raise InputError(f"--resume_from_checkpoint {value!r}: checkpoint folder not found")
    try:
        checkpoints.resolve_resume(value, training_args.output_dir, training_args.allow_resume_without_optimizer)
    except ValueError as err:
        raise InputError(f"--resume_from_checkpoint {'true' if value is True else repr(value)}: {err}") from None


def load_datasets(script_args, training_args, dataset_args):
    """The train and eval datasets named by the arguments, with their columns checked."""
    wants_eval = training_args.eval_strategy != "no"
    if dataset_args.datasets:  # TRL's `datasets:` mixture (YAML)
        from trl import get_dataset

        if script_args.dataset_name:
            print(
                f"{PROG}: note: both `datasets` and `dataset_name` are set; training on the `datasets` mixture, "
                f"not on {script_args.dataset_name!r} (as `trl dpo` does).",
                file=sys.stderr,
            )

        try:
            dataset = get_dataset(dataset_args)
        except (OSError, ValueError) as err:
            raise InputError(f"cannot load the `datasets` mixture: {one_line(err)}") from None
        source = "the `datasets` mixture"
    else:
        dataset = load_preference_dataset(
            script_args.dataset_name, script_args.dataset_config, streaming=script_args.dataset_streaming
        )
        source = script_args.dataset_name
    train = select_split(dataset, script_args.dataset_train_split, source)
    train_split = f"train (split {script_args.dataset_train_split!r})"
    check_preference_columns(train, train_split, training_args.preference_column)
    evaluation = None
    if wants_eval:
        evaluation = select_split(dataset, script_args.dataset_test_split, source, purpose="evaluation")
        check_preference_columns(
            evaluation, f"eval (split {script_args.dataset_test_split!r})", training_args.preference_column
        )
    return train, evaluation


def prepare(script_args, training_args, model_args, dataset_args):
    """Check the model and load the data; every input problem is raised here, before training."""
    check_streaming_options(script_args, training_args)
    check_not_the_model_folder(training_args, model_args)
    check_attn_implementation(model_args.attn_implementation)
    if training_args.model_init_kwargs is not None:
        if not isinstance(training_args.model_init_kwargs, dict):
            raise InputError(
                "--model_init_kwargs must be a mapping (in a string: a JSON object), got "
                f"{type(training_args.model_init_kwargs).__name__} {training_args.model_init_kwargs!r}"
            )
        check_model_init_kwargs(training_args.model_init_kwargs)
    check_model(model_args, training_args)
    resolve_resume(training_args)
    train_dataset, eval_dataset = load_datasets(script_args, training_args, dataset_args)
    if not hasattr(train_dataset, "__len__") and training_args.max_steps <= 0:  # a stream has no length
        raise InputError("a streamed dataset (--dataset_streaming true) has no length: set --max_steps")
    check_chat_template(model_args, training_args, train_dataset)
    check_output_dir(training_args)
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs
    return train_dataset, eval_dataset


# ----------------------------------------------------------------------------------------------- training
def run(script_args, training_args, model_args, dataset_args, train_dataset=None, eval_dataset=None):
    """Train, save the model and its IPO model card (and push when asked); returns the trainer.

    The same steps as TRL's ``trl/scripts/dpo.py``, with :class:`~trl_ipo.trainer.IPOTrainer`.
    """
    import transformers
    from packaging.version import Version
    from trl import get_peft_config, get_quantization_config

    from ..config import move_hub_token_to_env
    from ..trainer import IPOTrainer

    if train_dataset is None:
        train_dataset, eval_dataset = prepare(script_args, training_args, model_args, dataset_args)
    # Trainer pickles its arguments into training_args.bin; a --hub_token must not end up there in clear.
    move_hub_token_to_env(training_args)

    trainer = IPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    if script_args.ignore_bias_buffers:
        import torch

        _compat.ddp_ignore(
            trainer.model, [name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool]
        )

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json in output_dir, for `trl-ipo plot OUTPUT_DIR`
    hub_dataset = _hub_dataset_name(script_args)
    trainer.create_model_card(model_name=_model_name(training_args), dataset_name=hub_dataset)
    trainer.accelerator.print(f"Model and model card saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=hub_dataset)
        trainer.accelerator.print(f"Model pushed to https://huggingface.co/{trainer.hub_model_id}.")
    if Version(transformers.__version__) >= Version("5.18.0"):
        trainer.end()
    return trainer


def _hub_dataset_name(script_args) -> str | None:
    name = script_args.dataset_name
    return name if name and not is_local_reference(name) else None


def _model_name(training_args) -> str:
    if training_args.hub_model_id:
        return training_args.hub_model_id.split("/")[-1]
    return os.path.basename(os.path.normpath(training_args.output_dir))


# ----------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Parse, check, train. Returns 0 on success, 2 on bad input (one line on stderr, no traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # wandb records the process's command line (sys.argv) with the run: mask --hub_token and any other secret-named
    # value there (also inside a JSON flag such as --model_init_kwargs) once it has been read.
    sys.argv[:] = scrub_argv(sys.argv)
    try:
        args = parse_args(argv, make_parser(prog))
        datasets = prepare(*args)
        run(*args, *datasets)  # a bad row of a streamed dataset surfaces here, as it is read
    except InputError as err:
        return report(prog, err)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
