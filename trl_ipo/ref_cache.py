"""``precompute_ref_log_probs=True`` that works on any number of ranks.

TRL 1.16 computes the reference log-probs on every rank, gathers them, lets rank 0 write them to an Arrow cache file
next to the dataset's own cache, and then has every rank read that file back. A dataset built in memory
(``Dataset.from_list``, a list of dicts, a pandas frame) has no cache folder, so ``datasets`` names a file with a
random name in a per-process temporary folder: rank 0 writes its file and every other rank looks for a different,
non-existent one, and the run stops with ``FileNotFoundError``. Nodes without a shared file system fail the same way
for datasets loaded from files.

Here every rank already holds the gathered log-probs, so each rank attaches them to its dataset in memory; no rank
reads a file that another rank wrote. A dataset loaded from files still gets the cache file next to its own, written
atomically by the main process, and the cache is used only when every rank can read it. The cache key is TRL's
(dataset fingerprint and reference weights) plus ``ld_alpha``, which changes the reference log-probs.
"""

from __future__ import annotations

import os
import warnings

import torch
from accelerate.utils import broadcast_object_list, gather_object
from datasets import Dataset, IterableDataset, concatenate_datasets
from datasets.fingerprint import Hasher, is_caching_enabled
from torch.utils.data import DataLoader

from . import _compat

COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def precompute_ref_logps(trainer, dataset: Dataset, name: str, batch_size: int) -> Dataset:
    """``dataset`` with the reference log-prob columns added, identical on every rank."""
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            "`precompute_ref_log_probs=True` is not supported with IterableDataset. Use a map-style Dataset or set "
            "`precompute_ref_log_probs=False`."
        )
    accelerator = trainer.accelerator
    key = [Hasher.hash(_compat.precompute_cache_key(trainer, dataset))]
    broadcast_object_list(key, from_process=0)  # fingerprints of in-memory datasets differ between processes
    cache_file = cache_file_path(dataset, key[0])
    readable = cache_file is not None and os.path.isfile(cache_file)
    if all(gather_object([readable])):
        return concatenate_datasets([dataset, Dataset.from_file(cache_file)], axis=1)

    chosen, rejected = _reference_pass(trainer, dataset, name, batch_size)
    if len(chosen) != len(dataset):
        raise RuntimeError(f"reference pass over the {name} dataset gave {len(chosen)} rows for {len(dataset)}.")
    columns = Dataset.from_dict({COLUMNS[0]: chosen.numpy(), COLUMNS[1]: rejected.numpy()})
    if cache_file is not None and accelerator.is_main_process:
        try:
            _write_atomically(columns, cache_file)
        except OSError as err:  # a read-only dataset cache: train from memory, recompute next time
            warnings.warn(
                f"Could not cache the reference log-probs at {cache_file} ({err}); they are kept in memory.",
                stacklevel=2,
            )
    accelerator.wait_for_everyone()
    return concatenate_datasets([dataset, columns], axis=1)


def cache_file_path(dataset: Dataset, key: str) -> str | None:
    """The cache file next to the dataset's own Arrow files; ``None`` for a dataset held in memory."""
    if not is_caching_enabled() or not dataset.cache_files:
        return None
    return os.path.join(os.path.dirname(dataset.cache_files[0]["filename"]), f"cache-ref-logps-{key}.arrow")


def _reference_pass(trainer, dataset, name, batch_size):
    """Reference log-probs of every row, in dataset order, on every rank (a collective: all ranks take part)."""
    from trl.models import prepare_deepspeed

    accelerator = trainer.accelerator
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=trainer.data_collator,
        num_workers=trainer.args.dataloader_num_workers,
        pin_memory=trainer.args.dataloader_pin_memory,
        shuffle=False,
    )
    loader = accelerator.prepare(loader)
    # Before train() the policy is not wrapped yet; under DeepSpeed it is placed and gathered by an inference engine,
    # built once and kept for later passes (as TRL does).
    if trainer.ref_model is None and trainer.is_deepspeed_enabled:
        model = _compat.precompute_engine(trainer, lambda: prepare_deepspeed(trainer.model, accelerator))
    else:
        model = trainer.ref_model or trainer.model
    chosen, rejected = [], []
    for batch in loader:
        batch_chosen, batch_rejected = trainer.compute_ref_log_probs(model, batch)
        # gather_for_metrics drops the rows the sampler repeated to give every rank a full last batch.
        batch_chosen, batch_rejected = accelerator.gather_for_metrics((batch_chosen, batch_rejected))
        chosen.append(batch_chosen.detach().float().cpu())
        rejected.append(batch_rejected.detach().float().cpu())
    return torch.cat(chosen), torch.cat(rejected)


def _write_atomically(columns: Dataset, path: str) -> None:
    """Write ``columns`` as an Arrow stream file at ``path``; a crash mid-write never leaves a readable stub."""
    from datasets.arrow_writer import ArrowWriter

    partial = f"{path}.{os.getpid()}.partial"
    try:
        with ArrowWriter(path=partial, features=columns.features) as writer:
            writer.write_table(columns.data.table)
            writer.finalize()
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
