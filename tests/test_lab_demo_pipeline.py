"""trl_ipo.lab.experiments.demo_pipeline: the environment a reproduction must match (the pipeline itself runs in
tests/test_demo.py, slow)."""

import os
import platform
from types import SimpleNamespace

import datasets
import tokenizers
import torch
import transformers
import trl

from trl_ipo.lab.experiments.demo_pipeline import environment


def test_environment_names_the_installed_versions_and_the_threads():
    env = environment(SimpleNamespace(threads=3))
    assert {k: env[k] for k in ("python", "torch", "transformers", "trl", "datasets", "tokenizers")} == {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "datasets": datasets.__version__,
        "tokenizers": tokenizers.__version__,
    }
    assert env["cpu_count"] == os.cpu_count()
    assert env["torch_threads"] == 3
    assert isinstance(env["cpu"], str)
