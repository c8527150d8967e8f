"""Who holds which of the job's data: the train rows miners fetch, the held-out rows only validators derive.

DESIGN.md "The network", step 1, and "What the closest existing system gets wrong" (its eval data
came from the training stream). The owner splits the job's records with a secret salt
(`data.splits`), packs the **train** split into rows and puts them in the store: that object is
all the data a miner can fetch. The held-out split is never uploaded: each validator re-derives
it from the same records and the salt it shares with the owner, and checks it got the owner's
split through `JobSpec.heldout_check`, an HMAC under the salt of the held-out records' fingerprint.

Train rows travel as safetensors (`input_ids`, `labels`: int32 [N, seq_len]), loaded without
pickle; int32 halves the bytes and holds any vocabulary and the -100 label.
"""

import hashlib
import hmac
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from moeforge.data.fingerprint import fingerprint_records
from moeforge.data.formatting import IGNORE_INDEX, encode_records
from moeforge.data.packing import Packed, pack_examples
from moeforge.data.records import Record
from moeforge.data.splits import Splits, split_records
from moeforge.errors import ArtifactNotFound, ConfigError, DataError, ModelError
from moeforge.model.fingerprint import model_fingerprint

log = logging.getLogger(__name__)

_ROW_KEYS = ("input_ids", "labels")


def load_base(path: str | Path, fingerprint: str | None = None, device: str = "cpu"):
    """(model on DEVICE, tokenizer) of the job's base checkpoint; ModelError if its weights are not `fingerprint`'s."""
    from transformers import AutoTokenizer

    from moeforge.model.device import resolve_device
    from moeforge.model.load import load_model

    if not Path(path).is_dir():
        raise ArtifactNotFound(
            f"base model {path}: no such folder on this machine. Every role loads the job's base model from "
            "this path; copy the checkpoint there (or build it with `moeforge testbed build --out PATH`)."
        )
    model = load_model(path)
    check_fingerprint(model, fingerprint, path)
    model.to(resolve_device(device))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"base model {path}: the weights load but the tokenizer does not ({exc}).") from exc
    return model, tokenizer


def check_fingerprint(model, fingerprint: str | None, path: str | Path) -> None:
    """ModelError unless `model`'s weights hash to `fingerprint` (None: no check)."""
    if fingerprint is None:
        return
    have = model_fingerprint(model)
    if have != fingerprint:
        raise ModelError(
            f"base model {path} has fingerprint {have[:16]}…, but the job was made on {fingerprint[:16]}…. "
            "The checkpoint at this path changed since the job was published; restore the job's base model."
        )


def split_job(records: Sequence[Record], salt: str, *, validation: float, heldout: float) -> Splits:
    """The job's train / validation / held-out split under the secret salt."""
    if not records:
        raise DataError("the job has no records. Check --data and its field options.")
    splits = split_records(records, salt, validation=validation, heldout=heldout)
    if not splits.train or not splits.heldout:
        raise DataError(
            f"the split of {len(records)} records left {len(splits.train)} to train on and {len(splits.heldout)} "
            "held out; the job needs both. Give it more records or change the fractions."
        )
    return splits


def pack_rows(records: Sequence[Record], tokenizer, seq_len: int) -> Packed:
    """The records encoded (prompts masked) and packed in order into rows of seq_len."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return pack_examples(encode_records(records, tokenizer), seq_len, pad_id)


def heldout_check(salt: str, heldout: Sequence[Record]) -> str:
    """HMAC-SHA256 under the salt of the held-out records' fingerprint: proves a validator has the owner's split."""
    return hmac.new(salt.encode("utf-8"), fingerprint_records(heldout).encode("ascii"), hashlib.sha256).hexdigest()


def heldout_rows(job, records: Sequence[Record], salt: str, tokenizer) -> Packed:
    """A validator's held-out rows for `job` (a JobSpec), re-derived from the records and the salt.

    DataError if the records are not the job's; ConfigError if the salt is not the owner's.
    """
    have = fingerprint_records(records)
    if have != job.data_fingerprint:
        raise DataError(
            f"the data given ({len(records)} records, fingerprint {have[:16]}…) is not job {job.job_id}'s "
            f"(fingerprint {job.data_fingerprint[:16]}…, domain {job.domain!r}). Pass the same --data (and field "
            "options) the owner published the job with."
        )
    splits = split_job(records, salt, validation=job.split.validation, heldout=job.split.heldout)
    if not hmac.compare_digest(heldout_check(salt, splits.heldout), job.heldout_check):
        raise ConfigError(
            f"the salt does not reproduce job {job.job_id}'s held-out split: it is not the owner's salt. "
            "Pass the owner's secret with --salt or MOEFORGE_DATA_SALT."
        )
    packed = pack_rows(splits.heldout, tokenizer, job.seq_len)
    if packed.input_ids.shape[0] != job.heldout_rows:
        raise DataError(
            f"the held-out split packs into {packed.input_ids.shape[0]} rows here, but into {job.heldout_rows} for the "
            "owner: the tokenizer differs. Use the job's base model folder, tokenizer included."
        )
    return packed


def encode_train_rows(packed: Packed) -> bytes:
    """The train rows as safetensors bytes (int32), what the owner puts in the store."""
    return save_safetensors({"input_ids": packed.input_ids.to(torch.int32), "labels": packed.labels.to(torch.int32)})


def decode_train_rows(data: bytes, *, seq_len: int, rows: int) -> Packed:
    """Train rows fetched from the store; DataError unless they are exactly the job's [rows, seq_len] int32 pair."""
    try:
        tensors = load_safetensors(data)
    except SafetensorError as exc:
        raise DataError(f"the job's train rows are not a readable safetensors object ({exc}).") from None
    if sorted(tensors) != sorted(_ROW_KEYS):
        raise DataError(f"the job's train rows hold tensors {sorted(tensors)}, expected {list(_ROW_KEYS)}.")
    for key, t in tensors.items():
        if t.dtype != torch.int32 or tuple(t.shape) != (rows, seq_len):
            raise DataError(f"the job's train rows: {key} is {t.dtype}{tuple(t.shape)}, expected int32{(rows, seq_len)}.")
    ids, labels = tensors["input_ids"].long(), tensors["labels"].long()
    return Packed(input_ids=ids, labels=labels, n_tokens=int(ids.numel()), n_loss_tokens=int((labels != IGNORE_INDEX).sum()))


def shard(packed: Packed, indices: Sequence[int]) -> Packed:
    """The rows at `indices`, in that order, as their own Packed."""
    index = torch.as_tensor(list(indices), dtype=torch.long)
    ids, labels = packed.input_ids[index], packed.labels[index]
    return Packed(input_ids=ids, labels=labels, n_tokens=int(ids.numel()), n_loss_tokens=int((labels != IGNORE_INDEX).sum()))
