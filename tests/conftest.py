import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib
import random

import numpy as np
import pytest
import torch

from trl_ipo import _compat
from trl_ipo.lab.tiny import WORDS, make_pairs

_compat.enable_trl_fused_head_without_triton()  # stock trl 1.15 DPOTrainer on a CPU-only torch (compat runs)

__all__ = ["WORDS", "cpu_args", "make_pairs"]  # tests import these from conftest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def global_rng_restored():
    """Give Python's, numpy's and torch's global random generators back as they were.

    ``Trainer`` reseeds all three (``transformers.set_seed``), and some tests seed torch's themselves.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@pytest.fixture
def restore_global_rng():
    """Function-scoped :func:`global_rng_restored`; use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    with global_rng_restored():
        yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A locally built tiny Qwen2 + BPE tokenizer, saved as a model folder."""
    from trl_ipo.lab.tiny import build_tiny_model_folder

    path = tmp_path_factory.mktemp("tiny-qwen2")
    build_tiny_model_folder(path)
    return str(path)


@pytest.fixture
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture
def load_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    def _load():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)

    return _load


def cpu_args(output_dir, **overrides):
    """Config kwargs for deterministic, quick CPU runs."""
    base = dict(
        output_dir=str(output_dir),
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        data_seed=0,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        beta=0.1,
    )
    base.update(overrides)
    return base
