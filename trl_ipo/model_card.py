"""The model card of an IPO run: TRL's card (trainer name, paper, citation) plus a section with the IPO settings.

:class:`~trl_ipo.trainer.IPOTrainer` hands :data:`IPO_PAPER` to TRL's model-card machinery
(``BaseTrainer.create_model_card`` → ``trl.trainer.utils.generate_model_card``) and then calls
:func:`complete_model_card`, which inserts the objective that was optimised and the values of the IPO fields into
the written ``README.md`` (and names a local base model, which TRL's template leaves as ``None``).
"""

from __future__ import annotations

import os
import textwrap

from .config import ipo_setting_names

__all__ = [
    "IPO_PAPER",
    "IPO_FIELDS",
    "ipo_settings",
    "ipo_settings_section",
    "insert_ipo_settings",
    "complete_model_card",
    "trl_loss_modifiers",
]

IPO_PAPER = {
    "title": "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    "id": "2310.12036",
    # docstyle-ignore
    "citation": textwrap.dedent("""\
        @inproceedings{azar2024general,
            title        = {{A General Theoretical Paradigm to Understand Learning from Human Preferences}},
            author       = {Mohammad Gheshlaghi Azar and Zhaohan Daniel Guo and Bilal Piot and R{\\'e}mi Munos and Mark Rowland and Michal Valko and Daniele Calandriello},
            year         = 2024,
            booktitle    = {International Conference on Artificial Intelligence and Statistics, AISTATS 2024},
            series       = {Proceedings of Machine Learning Research},
            volume       = 238,
            pages        = {4447--4455},
            eprint       = {arXiv:2310.12036},
        }"""),
}

# The fields that define the IPO objective (IPOConfig), in the order the card lists them.
IPO_FIELDS = ipo_setting_names()

SECTION_TITLE = "## IPO settings"
_INSERT_BEFORE = "### Framework versions"


def ipo_settings(args) -> dict:
    """The IPO field values of ``args`` (an :class:`~trl_ipo.config.IPOConfig`)."""
    return {name: getattr(args, name, None) for name in IPO_FIELDS}


def ipo_settings_section(args) -> str:
    """Markdown stating the per-pair loss that was minimised and the IPO field values.

    Per pair, with ρ(y) = log π_θ(y|x) − log π_ref(y|x) (per-token mean or sum, ``logp_reduction``),
    Δ = ρ(y_chosen) − ρ(y_rejected) and q the preference for ``chosen``, the loss is
    (Δ − t/β)² (``paper``, Azar et al. 2023 eq. 17) or (β·Δ − t)² (``scaled``, β² times the paper form),
    with t = q − ½ (``symmetric``, the hard label ½ of eq. 17; docs/theory.md §2) or t = q (eq. 16).
    """
    settings = ipo_settings(args)
    target = "q − ½" if settings["symmetric"] else "q"
    loss = "(Δ − t/β)²" if settings["loss_form"] == "paper" else "(β·Δ − t)²"
    reduction = "mean per completion token" if settings["logp_reduction"] == "mean" else "summed over completion tokens"
    q_source = (
        f"read from the dataset column `{settings['preference_column']}`"
        if settings["preference_column"]
        else "1 for every pair (hard labels)"
    )
    lines = [
        SECTION_TITLE,
        "",
        "Trained with IPO (Identity Preference Optimisation). Per preference pair the loss is",
        "",
        f"    L = {loss},   t = {target},   Δ = ρ(y_chosen) − ρ(y_rejected),",
        "",
        f"where ρ(y) = log π_θ(y|x) − log π_ref(y|x) ({reduction}) and q, the probability that the chosen "
        f"completion is preferred, is {q_source}.",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | `{value!r}` |" for name, value in settings.items()]
    extra = {
        "learning_rate": getattr(args, "learning_rate", None),
        "max_length": getattr(args, "max_length", None),
        "precompute_ref_log_probs": getattr(args, "precompute_ref_log_probs", None),
    }
    lines += [f"| `{name}` | `{value!r}` |" for name, value in extra.items()]
    modifiers = trl_loss_modifiers(args)
    if modifiers:
        lines += [f"| `{name}` | `{value!r}` |" for name, value in modifiers.items()]
        lines += [
            "",
            "TRL's loss modifiers were on, so ρ and the pair weights are modified as stated in trl_ipo's "
            'docs/usage.md ("Loss modifiers from TRL").',
        ]
    return "\n".join(lines) + "\n"


def trl_loss_modifiers(args) -> dict:
    """The non-default TRL loss modifiers of ``args`` (``ld_alpha``, ``f_divergence_type``, ``use_weighting``)."""
    found = {}
    if getattr(args, "ld_alpha", None) is not None:
        found["ld_alpha"] = args.ld_alpha
    if getattr(args, "f_divergence_type", "reverse_kl") != "reverse_kl":
        found["f_divergence_type"] = args.f_divergence_type
        if args.f_divergence_type == "alpha_divergence":
            found["f_alpha_divergence_coef"] = args.f_alpha_divergence_coef
    if getattr(args, "use_weighting", False):
        found["use_weighting"] = True
    return found


def insert_ipo_settings(card_text: str, args) -> str:
    """``card_text`` with the IPO settings section placed before the framework versions (replacing an old one)."""
    if SECTION_TITLE in card_text:  # a card rewritten at a later checkpoint: replace the section
        start = card_text.index(SECTION_TITLE)
        end = card_text.find("\n#", start + len(SECTION_TITLE))
        card_text = card_text[:start] + (card_text[end + 1 :] if end != -1 else "")
    section = ipo_settings_section(args)
    if _INSERT_BEFORE in card_text:
        at = card_text.index(_INSERT_BEFORE)
        return card_text[:at] + section + "\n" + card_text[at:]
    return card_text.rstrip("\n") + "\n\n" + section


def complete_model_card(trainer) -> None:
    """After TRL wrote ``<output_dir>/README.md`` for ``trainer``: add the IPO settings, name a local base model."""
    if not trainer.is_world_process_zero():
        return
    readme_path = os.path.join(trainer.args.output_dir, "README.md")
    if not os.path.isfile(readme_path):
        return
    with open(readme_path, encoding="utf-8") as f:
        text = f.read()
    base = getattr(getattr(trainer.model, "config", None), "_name_or_path", None) or "a local model"
    text = text.replace("[None](https://huggingface.co/None)", f"`{base}` (local)")
    text = text.replace('model="None"', f'model="{trainer.args.output_dir}"')
    with open(readme_path, "w", encoding="utf-8") as f:
        f.write(insert_ipo_settings(text, trainer.args))
