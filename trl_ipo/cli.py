"""``trl-ipo`` (and ``python -m trl_ipo``): dispatch to the subcommand modules in ``trl_ipo.commands``.

Subcommands are imported lazily so ``trl-ipo --help`` stays fast and a missing optional dependency only affects the
subcommand that needs it.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys

from .errors import InputError, exit_on_input_error, report
from .redact import MASK, is_secret_name

# The one home of each command's module and summary: `trl-ipo --help` lists them without importing the commands, and
# each command module reads its own summary from here (``HELP = command_summary(name)``).
SUBCOMMANDS = {
    "train": ("trl_ipo.commands.train", "train with IPO; same arguments as `trl dpo` plus the IPO fields"),
    "compare": ("trl_ipo.commands.compare", "DPO vs IPO (and soft-label IPO) on your own model and data"),
    "demo": ("trl_ipo.commands.demo", "RLHF vs DPO vs IPO on a synthetic task with a known ground truth"),
    "bandit": ("trl_ipo.commands.bandit", "the IPO paper's 3-action bandit: exact and gradient IPO vs DPO"),
    "plot": ("trl_ipo.commands.plot", "PNG plots of margins, targets and losses from runs' trainer_state.json"),
    "example": ("trl_ipo.commands.example", "a short IPO run on the bundled example dataset with a tiny local model"),
    "tiny-model": (
        "trl_ipo.commands.tiny_model",
        "build a tiny random model and tokenizer locally (and optionally synthetic pairs) to try commands on",
    ),
}


class ArgumentParser(argparse.ArgumentParser):
    """The subcommands' parser: a usage error is an :class:`InputError` (one line, exit status 2, no usage block),
    and a flag given twice is an error instead of the last value silently winning."""

    def error(self, message):
        raise InputError(message)

    def parse_known_args(self, args=None, namespace=None):
        check_repeated_flags(self, sys.argv[1:] if args is None else list(args))
        return super().parse_known_args(args, namespace)


_REPEATABLE = (argparse._AppendAction, argparse._AppendConstAction, argparse._CountAction, argparse._HelpAction)


def _flag_action(parser, token: str):
    name = token.split("=", 1)[0]
    actions = parser._option_string_actions
    if name in actions:
        return name, actions[name]
    if not name.startswith("--") or not parser.allow_abbrev:
        return name, None
    matches = {actions[o] for o in actions if o.startswith(name)}  # argparse accepts an unambiguous prefix
    return name, (matches.pop() if len(matches) == 1 else None)


def check_repeated_flags(parser, argv) -> None:
    """A flag given more than once (``--beta 0.1 --beta 0.9``, also through a prefix or ``--beta=``) is an
    :class:`InputError` naming it and its values; flags meant to repeat (``action="append"``) are left alone."""
    seen: dict[int, tuple[str, list[str]]] = {}
    for i, token in enumerate(argv):
        if token == "--":
            break
        if not token.startswith("-") or len(token) < 2:
            continue
        name, action = _flag_action(parser, token)
        if action is None or isinstance(action, _REPEATABLE):
            continue
        if "=" in token:
            value = token.split("=", 1)[1]
        elif action.nargs != 0 and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
        else:
            value = "(no value)"
        typed = name if name in action.option_strings else action.option_strings[0]
        flag, values = seen.setdefault(id(action), (typed, []))
        values.append(MASK if is_secret_name(flag.lstrip("-")) else value)
        if len(values) > 1:
            given = ", then ".join(repr(v) for v in values)
            raise InputError(f"{flag} is given {len(values)} times ({given}); give each flag once.")


def require_at_least(flag: str, value, minimum) -> None:
    """``value`` (already parsed as a number) is at least ``minimum``; else an :class:`InputError` naming the flag."""
    if not value >= minimum:  # also refuses nan
        raise InputError(f"{flag} must be at least {minimum}, got {value!r}")


def require_positive_real(flag: str, value) -> None:
    """``value`` is a finite number > 0 (argparse's ``float`` accepts ``nan`` and ``inf``)."""
    import math

    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{flag} must be a finite number > 0, got {value!r}")


def command_summary(name: str) -> str:
    """The one-line summary of subcommand ``name`` (its ``HELP``)."""
    return SUBCOMMANDS[name][1]


def _usage() -> str:
    lines = ["usage: trl-ipo <command> [options]", "", "commands:"]
    for name, (_, summary) in SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {summary}")
    lines += ["", "Run `trl-ipo <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(_usage())
        _print_ipo_flags()
        return 0
    commands = ", ".join(SUBCOMMANDS)
    if not argv:
        return report("trl-ipo", f"no command given; choose one of {commands} (`trl-ipo --help` describes them)")
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        close = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return report("trl-ipo", f"unknown command {name!r}{hint}; the commands are {commands}")
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
    except ModuleNotFoundError as err:
        return report(f"trl-ipo {name}", f"this command is unavailable ({err})")
    # Every subcommand's user errors end here as one line on stderr with exit status 2.
    return exit_on_input_error(f"trl-ipo {name}", lambda: module.main(rest))


def _print_ipo_flags() -> None:
    """The IPO fields every training command accepts, with their meaning."""
    from .config import IPOConfig, ipo_setting_names

    print("\nIPO flags (train, compare, and scripts/train_ipo.py):")
    for name in ipo_setting_names(loss_weights=False):
        help_text = IPOConfig.__dataclass_fields__[name].metadata.get("help", "")
        print(f"  --{name:<19} {help_text}")


if __name__ == "__main__":
    sys.exit(main())
