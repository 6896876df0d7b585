"""OnlineIPOTrainer: online IPO and IPO-MD (Calandriello et al. 2024) on top of TRL's OnlineDPOTrainer.

The IPO loss assumes both completions of a pair come from one behaviour policy μ (Azar et al. 2023 §5; the
derivation is in docs/theory.md). Online IPO takes μ to be the policy being trained, IPO-MD a geometric mixture of
the policy and the reference; Calandriello et al. 2024, *Human Alignment of Large Language Models through Online
Preference Optimisation* (ICML 2024), introduce both.

Reused from ``trl.experimental.online_dpo.OnlineDPOTrainer``: model / reference / PEFT / reward-model set-up and their
DeepSpeed or FSDP preparation, ``transformers`` and vLLM generation from the policy, reward functions, metric logging.
Replaced: the training step. Per batch of prompts x:

1. sample y_a, y_b ~ μ(·|x): the policy π_θ (λ = 0) or the token-level mixture π_θ^(1−λ)·π_ref^λ (IPO-MD,
   :mod:`trl_ipo.online.sampling`);
2. label q = P(y_a ≻ y_b | x) with a judge or from rewards (:mod:`trl_ipo.online.judges`; exact ties give ½);
3. minimise the offline IPO loss of :mod:`trl_ipo.losses` on (y_a, y_b, q) — same ``loss_form``, ``symmetric`` and
   ``logp_reduction`` (default per-token mean), so β means the same online and offline.

Unlike TRL's ``OnlineDPOTrainer(loss_type="ipo")``, which regresses summed log-ratios onto 1/(2β), labels
r_a ≥ r_b as a win for a, and back-propagates the un-divided micro-batch loss under gradient accumulation
(accumulated gradients are ``gradient_accumulation_steps`` times too large), the loss here goes through
``transformers.Trainer.training_step``, which divides by the accumulation steps.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import AutoModelForCausalLM
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl.data_utils import apply_chat_template, is_conversational, maybe_apply_chat_template
from trl.import_utils import suppress_experimental_warning
from trl.models.utils import unwrap_model_for_generation

with suppress_experimental_warning():  # a deliberate, pinned dependency (trl 1.16)
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

from .. import _compat
from ..config import config_values, default_output_dir
from ..losses import ipo_regression, reduce_logps
from ..metric_keys import IPO_KEYS
from ..metrics import ipo_statistics
from ..run_args import save_args_record
from .config import OnlineIPOConfig
from .judges import combine_rewards, preference_from_judge, preference_from_rewards, reward_values
from .sampling import build_logits_warpers, completion_logps, sample_completions

_STAT_KEYS = (
    *IPO_KEYS,
    "online/preference_mean",
    "online/tie_fraction",
    "online/kl",
    "online/completion_length",
    "online/contains_eos",
    "online/_agree_count",
    "online/_decided_count",
    "beta",
)


class OnlineIPOTrainer(OnlineDPOTrainer):
    """Online IPO (``mixture_coef=0``) and IPO-MD (``mixture_coef>0``).

    Args:
        model: the policy (model id, local path or ``PreTrainedModel``).
        ref_model: the reference π_ref. Default: a frozen copy of ``model`` (with PEFT: the model with its adapter
            disabled). Under DeepSpeed ZeRO-3 the copy is loaded again from ``model`` when it is a path/id, so that it
            is sharded; pass ``ref_model`` explicitly when ``model`` is an already built object.
        reward_funcs: reward functions / reward models as in TRL's ``OnlineDPOTrainer`` (summed, weighted by
            ``reward_weights``), turned into q per ``reward_to_preference``. Exclusive with ``judge``. A function
            may return ``None`` for a completion that another function scores; a completion no function scored, a
            wrong count or a non-number is an ``InputError`` naming the function.
        judge: ``judge(prompts, completions_a, completions_b) -> list[float]``, q = P(a ≻ b) per pair in [0, 1];
            it gets copies of the lists, and ``OnlineIPOConfig.judge_timeout`` bounds how long it may take.
        args: an :class:`OnlineIPOConfig` (an ``OnlineDPOConfig`` is converted, with IPO defaults for the new fields).
        train_dataset: a dataset with a ``prompt`` column (text or conversational); other columns are passed to reward
            functions as keyword arguments.

    Logged (averaged over the logging window): ``loss``; ``ipo/delta``, ``ipo/target``, ``ipo/residual``,
    ``ipo/sq_error`` (as offline, in the units of ``loss_form``); ``online/preference_mean`` (mean q),
    ``online/tie_fraction`` (q = ½ exactly), ``online/judge_agreement`` (over pairs with q ≠ ½: fraction where the
    policy's implicit preference sign(Δ) agrees with sign(q − ½); NaN if every pair was a tie),
    ``online/kl`` (mean over sampled completions of Σ_t [log π_θ − log π_ref](y_t), completion tokens only — an
    unbiased estimate of KL(π_θ‖π_ref) per sequence when λ = 0), ``online/completion_length``,
    ``online/contains_eos``, ``beta``.
    """

    _tag_names = ["trl", "online-dpo", "ipo", "online-ipo", "trl_ipo"]
    _name = "Online IPO"
    loss_is_scaled_for_ga = False  # Trainer.training_step divides the loss by the gradient accumulation steps

    def __init__(
        self,
        model,
        ref_model=None,
        reward_funcs=None,
        judge=None,
        args: OnlineIPOConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        peft_config=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        args = _as_online_ipo_config(args, model)
        if (judge is None) == (reward_funcs is None):
            raise ValueError("OnlineIPOTrainer needs exactly one of `judge` or `reward_funcs` to label the pairs.")
        if judge is not None and not callable(judge):
            raise TypeError(f"`judge` must be callable as judge(prompts, completions_a, completions_b), got {judge!r}")
        if judge is not None and args.missing_eos_penalty is not None:
            raise ValueError(
                "OnlineIPOConfig.missing_eos_penalty applies to rewards; with a `judge`, penalise a missing EOS "
                "inside the judge."
            )
        if eval_dataset is not None:
            raise ValueError("OnlineIPOTrainer has no evaluation loop: pass eval_dataset=None.")
        _validate_prompt_dataset(train_dataset)
        if (
            ref_model is None
            and peft_config is None
            and is_deepspeed_zero3_enabled()
            and (isinstance(model, str) or not is_peft_model(model))
        ):
            ref_model = _load_sharded_reference(model, args)

        self.judge = judge
        super().__init__(
            model,
            ref_model=ref_model,
            reward_funcs=reward_funcs if judge is None else [_labelled_by_judge],
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            peft_config=peft_config,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        if judge is not None:
            self.reward_funcs, self.reward_processing_classes, self.reward_func_names = None, None, []
        self.stats = {key: [] for key in _STAT_KEYS}
        # Trainer seeds every rank alike, so ranks would draw the same random numbers for their completions. With
        # several ranks, sampling draws from a per-rank stream instead (the global generator, which also seeds the
        # data order, is left as it is).
        self._rank_sampling_generator = None
        if self.accelerator.num_processes > 1:
            self._rank_sampling_generator = torch.Generator().manual_seed(args.seed + self.accelerator.process_index)
        self._sampling_warpers = build_logits_warpers(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
        )

    # ------------------------------------------------------------------------------------------------- one step
    def training_step(self, model, inputs, num_items_in_batch=None):
        # transformers.Trainer's step: compute_loss, loss / gradient_accumulation_steps, backward.
        return super(OnlineDPOTrainer, self).training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise NotImplementedError("OnlineIPOTrainer.compute_loss returns the loss only.")
        if "image" in inputs:
            raise NotImplementedError("OnlineIPOTrainer trains text-only policies; the batch has an `image` column.")
        prompts = inputs["prompt"]
        batch_size = len(prompts)

        # 1. Sample two completions per prompt: rows [a_0 … a_{B−1}, b_0 … b_{B−1}].
        prompt_ids, prompt_mask, completion_ids, completion_mask = _compat.online_generate(self, model, prompts)

        # 2. Label: q = P(y_a ≻ y_b | x).
        contains_eos = torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=completion_ids.device))
        contains_eos = (contains_eos & completion_mask.bool()).any(dim=-1)
        preference = self._label_pairs(inputs, completion_ids, contains_eos)

        # 3. The offline IPO loss on the sampled pairs.
        logps = completion_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, self.max_length)
        with torch.no_grad():
            ref_logps = self._reference_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        mask = completion_mask.bool()
        num_tokens = mask.sum(dim=1)
        logratio_sums = torch.where(mask, logps - ref_logps, 0.0).sum(dim=1)  # Σ_t log π_θ/π_ref per completion
        logratios = reduce_logps(logratio_sums, num_tokens, self.args.logp_reduction)
        logratios_a, logratios_b = logratios.split(batch_size)
        margin, target = ipo_regression(
            logratios_a,
            logratios_b,
            self.beta,
            preference,
            symmetric=self.args.symmetric,
            loss_form=self.args.loss_form,
        )
        loss = ((margin - target) ** 2).mean()

        self._log_step(margin.detach(), target.detach(), preference, logratio_sums.detach(), num_tokens, contains_eos)
        return loss

    # -------------------------------------------------------------------------------------------------- sampling
    def _generate(self, model, prompts, images=None):
        """Two completions per prompt: TRL's ``generate`` path for λ = 0, the mixture sampler for λ > 0."""
        with self._rank_sampling_rng():
            if self.args.mixture_coef == 0:
                return super()._generate(model, prompts, images)
            return self._generate_from_mixture(model, prompts)

    @contextmanager
    def _rank_sampling_rng(self):
        if self._rank_sampling_generator is None:
            yield
            return
        seed = int(torch.randint(2**62, (1,), generator=self._rank_sampling_generator))
        device = self.accelerator.device
        devices = [device] if device.type not in ("cpu", "mps") else []
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            torch.manual_seed(seed)
            yield

    def _generate_from_mixture(self, model, prompts):
        device = self.accelerator.device
        prompts_text = [maybe_apply_chat_template({"prompt": p}, self.processing_class)["prompt"] for p in prompts]
        encoded = self.processing_class(
            text=prompts_text, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        prompt_ids = encoded["input_ids"].to(device).repeat(2, 1)
        prompt_mask = encoded["attention_mask"].to(device).repeat(2, 1)
        with (
            unwrap_model_for_generation(
                model, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
            ) as policy,
            self._reference_for_sampling(policy) as reference,
        ):
            sampled = sample_completions(
                policy,
                prompt_ids,
                prompt_mask,
                max_new_tokens=self.args.max_new_tokens,
                eos_token_ids=self.eos_token_ids,
                pad_token_id=_compat.online_tokenizer(self).pad_token_id,
                ref_model=reference,
                mixture_coef=self.args.mixture_coef,
                logits_warpers=self._sampling_warpers,
                any_rank_unfinished=self._any_rank_unfinished,
            )
        return prompt_ids, prompt_mask, sampled.completion_ids, sampled.completion_mask, None

    @contextmanager
    def _reference_for_sampling(self, policy):
        if self.ref_model is None:  # PEFT: the reference is the policy with its adapter disabled
            yield _AdapterDisabled(policy)
        else:
            # Under ZeRO-3 the reference stays sharded: each forward gathers its layers (every rank steps in sync).
            yield self.ref_model

    def _any_rank_unfinished(self, local_unfinished: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return local_unfinished
        flag = torch.tensor([float(local_unfinished)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _reference_logps(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask):
        if self.ref_model is not None:
            return completion_logps(
                self.ref_model, prompt_ids, prompt_mask, completion_ids, completion_mask, self.max_length
            )
        with self.accelerator.unwrap_model(self.model).disable_adapter():
            return completion_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, self.max_length)

    # -------------------------------------------------------------------------------------------------- labelling
    def _label_pairs(self, inputs, completion_ids, contains_eos) -> torch.Tensor:
        prompts = inputs["prompt"]
        batch_size = len(prompts)
        device = completion_ids.device
        completions = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        if is_conversational({"prompt": prompts[0]}):
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        if self.judge is not None:
            completions_a, completions_b = completions[:batch_size], completions[batch_size:]
            return preference_from_judge(
                self.judge, prompts, completions_a, completions_b, device, timeout=self.args.judge_timeout
            )
        reward_kwargs = {
            key: (value * 2 if isinstance(value, (list, tuple)) else value)
            for key, value in inputs.items()
            if key != "prompt"
        }
        rewards = self._completion_rewards(2 * list(prompts), completions, completion_ids.tolist(), **reward_kwargs)
        if self.args.missing_eos_penalty is not None:
            rewards = rewards - self.args.missing_eos_penalty * (~contains_eos).float()
        rewards_a, rewards_b = rewards.split(batch_size)
        return preference_from_rewards(
            rewards_a, rewards_b, self.args.reward_to_preference, self.args.bradley_terry_temperature
        ).to(device)

    def _completion_rewards(self, prompts, completions, completion_ids, **reward_kwargs) -> torch.Tensor:
        """Σ_k w_k r_k per completion over ``reward_funcs``; a function's ``None``/NaN skips it for that completion
        (:func:`~trl_ipo.online.judges.combine_rewards`). Every output is checked before it becomes a tensor."""
        device = self.accelerator.device
        num = len(completions)
        reward_kwargs["trainer_state"] = self.state  # as TRL passes it, for rewards shaped by the step
        per_function = torch.empty(num, len(self.reward_funcs), dtype=torch.float32, device=device)
        for k, (function, tokenizer) in enumerate(zip(self.reward_funcs, self.reward_processing_classes, strict=True)):
            if isinstance(function, torch.nn.Module):
                per_function[:, k] = self._reward_model_scores(function, tokenizer, prompts, completions)
                continue
            output = function(  # copies: one function editing its lists cannot change what the next one sees
                prompts=list(prompts),
                completions=list(completions),
                completion_ids=list(completion_ids),
                **reward_kwargs,
            )
            values = reward_values(f"`{self.reward_func_names[k]}`", output, num)
            per_function[:, k] = torch.tensor(values, dtype=torch.float32, device=device)
        names = [f"`{name}`" for name in self.reward_func_names]
        return combine_rewards(per_function, names, self.reward_weights)

    def _reward_model_scores(self, reward_model, tokenizer, prompts, completions) -> torch.Tensor:
        """A sequence-classification reward model's score (its first logit) of each prompt + completion."""
        if is_conversational({"prompt": prompts[0]}):
            texts = [
                apply_chat_template({"messages": prompt + completion}, tokenizer)["text"]
                for prompt, completion in zip(prompts, completions, strict=True)
            ]
        else:
            texts = [prompt + completion for prompt, completion in zip(prompts, completions, strict=True)]
        encoded = tokenizer(
            text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False
        )
        encoded = {key: value.to(self.accelerator.device) for key, value in encoded.items()}
        with torch.inference_mode():
            return reward_model(**encoded).logits[:, 0].float()

    # --------------------------------------------------------------------------------------------------- metrics
    def _log_step(self, margin, target, preference, logratio_sums, num_tokens, contains_eos):
        gather = self.accelerator.gather
        margin, target, preference = gather(margin).float(), gather(target).float(), gather(preference).float()
        decided = preference != 0.5
        agree = (torch.sign(margin) == torch.sign(preference - 0.5)) & decided
        values = {
            **ipo_statistics(margin, target),
            "online/preference_mean": preference.mean(),
            "online/tie_fraction": (~decided).float().mean(),
            "online/kl": gather(logratio_sums).float().mean(),
            "online/completion_length": gather(num_tokens).float().mean(),
            "online/contains_eos": gather(contains_eos).float().mean(),
            "online/_agree_count": agree.float().sum(),
            "online/_decided_count": decided.float().sum(),
        }
        for key, value in values.items():
            self.stats[key].append(value.item())
        self.stats["beta"].append(self.beta)

    def _save(self, output_dir=None, state_dict=None):
        """Trainer's save, plus the JSON record of the arguments (:mod:`trl_ipo.run_args`)."""
        super()._save(output_dir, state_dict)
        save_args_record(self, output_dir)

    def log(self, logs, start_time=None):
        # Ratio of sums over the window: the averaged counts have the same ratio.
        agree, decided = logs.pop("online/_agree_count", None), logs.pop("online/_decided_count", None)
        if agree is not None and decided is not None:
            logs["online/judge_agreement"] = agree / decided if decided > 0 else float("nan")
        super().log(logs, start_time)


class _AdapterDisabled:
    """Calls a PEFT policy with its adapter disabled: the reference of a PEFT run, for the mixture sampler."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    @property
    def training(self):
        return self.peft_model.training

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)


def _labelled_by_judge(prompts, completions, **kwargs):
    raise RuntimeError("OnlineIPOTrainer labels pairs with its judge; no reward function is called.")


def _as_online_ipo_config(args, model) -> OnlineIPOConfig:
    if isinstance(args, OnlineIPOConfig):
        return args
    if args is None:
        return OnlineIPOConfig(output_dir=default_output_dir(model, "OnlineIPO"))
    if not isinstance(args, OnlineDPOConfig):
        raise TypeError(f"args must be an OnlineIPOConfig (or OnlineDPOConfig), got {type(args).__name__}")
    # An OnlineDPOConfig's loss_type is DPO's; this trainer always trains IPO.
    values = config_values(args, OnlineIPOConfig, skip={"loss_type"})
    if args.temperature == OnlineDPOConfig.__dataclass_fields__["temperature"].default:
        values.pop("temperature")  # TRL's default 0.9 → the on-policy default 1
    return OnlineIPOConfig(**values)


def _validate_prompt_dataset(dataset):
    if dataset is None:
        raise ValueError("OnlineIPOTrainer needs a train_dataset of prompts (a `prompt` column).")
    columns = getattr(dataset, "column_names", None)
    if columns is not None and "prompt" not in columns:
        raise ValueError(f"the train_dataset needs a `prompt` column; it has {list(columns)}.")
    if isinstance(dataset, Dataset):
        for i, prompt in enumerate(dataset["prompt"]):
            if prompt is None or (isinstance(prompt, (str, list)) and len(prompt) == 0):
                raise ValueError(
                    f"train_dataset row {i}: empty prompt {prompt!r}; every row needs a prompt to sample from."
                )


def _load_sharded_reference(model, args):
    if not isinstance(model, str):
        raise ValueError(
            "Under DeepSpeed ZeRO-3 the reference cannot be copied from an already built policy. Pass `ref_model` "
            "(e.g. AutoModelForCausalLM.from_pretrained(path), built after the OnlineIPOConfig so that it is "
            "sharded), or pass `model` as a path/id so the reference is loaded sharded."
        )
    kwargs = dict(args.model_init_kwargs or {})
    dtype = kwargs.get("dtype", "auto")
    if isinstance(dtype, str) and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    return AutoModelForCausalLM.from_pretrained(model, **kwargs)
