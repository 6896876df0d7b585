# /// script
# dependencies = [
#     "trl_ipo",
#     "peft",
# ]
# ///

"""
IPO training as a plain script, in the shape of TRL's `trl/scripts/dpo.py`. It takes the same arguments as
`trl-ipo train` (and as `trl dpo`, plus the IPO fields) and runs the same code (`trl_ipo.commands.train`).

# Quick local run (CPU is fine)
```bash
python scripts/train_ipo.py --config scripts/configs/quick_local.yaml \
    --model_name_or_path path/to/local/model --dataset_name path/to/pairs.jsonl
```

# 7B with LoRA, one node, accelerate
```bash
accelerate launch scripts/train_ipo.py --config scripts/configs/lora_7b.yaml
```

# ZeRO-3 full fine-tune with the DeepSpeed launcher (`--deepspeed` takes a file or a packaged name: zero3)
```bash
deepspeed --num_gpus 8 scripts/train_ipo.py --config scripts/configs/zero3_full.yaml
```

# Soft labels and ties from a column q ∈ [0, 1]
```bash
python scripts/train_ipo.py --config scripts/configs/quick_local.yaml \
    --model_name_or_path path/to/local/model --dataset_name path/to/pairs.parquet --preference_column q
```
"""

import sys

from trl_ipo.commands import train as ipo_train


def main(script_args, training_args, model_args, dataset_args):
    """Check the model and data (clear errors before training), train with IPOTrainer, save model and model card."""
    return ipo_train.run(script_args, training_args, model_args, dataset_args)


def make_parser():
    """TRL's TrlParser over ScriptArguments, IPOConfig, ModelConfig and DatasetMixtureConfig."""
    return ipo_train.make_parser(prog="train_ipo.py")


if __name__ == "__main__":
    # Parse (`--config` YAML, command-line overrides), check, train. Bad input: one-line message, exit status 2.
    # The `--local_rank` the deepspeed launcher appends is a TrainingArguments field, so it parses.
    sys.exit(ipo_train.main(sys.argv[1:], prog="train_ipo.py"))
