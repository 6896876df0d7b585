"""Subcommands of the ``trl-ipo`` command line; each module exposes ``HELP`` and ``main(argv) -> int``."""
