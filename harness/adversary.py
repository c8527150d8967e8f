"""Red-team miners and validators: every way to score without training, as data, for tests and `bench/attacks`.

DESIGN.md "What the closest existing system gets wrong": miners are anonymous and paid by score,
so each attack here is one the subnet will see. Not for production use; nothing in the network
imports it. An attack is an `Attack` (name, what a validator must answer, how the submission is
forged, and how it is committed and revealed); an `Adversary` is a hotkey *with* an attack
(composition, no subclassing) that `InProcessNetwork` drives like a `Miner`:

- most attacks start from an honest delta of the same round that leaked to them (`peers`), the
  worst case, and turn it into the attack: mutate the tensors, add keys, sign with another key,
  upload bytes that are not a valid payload, commit late or to another hash, re-sign a copy;
- `copy*`, `sybil`, `replay*`, `free_rider`, `diluted_copy`, `same_block_copy` reuse someone's
  work (the last three get past digest, cosine and commit-order checks; own-shard evidence answers
  them: `SHARD_EVIDENCE`); `minimal_effort` does a little real work and rescales it to look like
  more; `overfit` trains, but on what it guesses the validators will evaluate (train rows at the
  indices an earlier round's public seed picked);
- `DishonestValidator` wraps a validator and publishes a wrong merged state after judging.

`ATTACKS` maps each attack's name to it; `Attack.expect` lists the `Reject` reasons a validator
may give (None: the submission may be judged on its merits, see the attack's description).
"""

import dataclasses
import hashlib
import json
import logging
import math
import pickle
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save as save_safetensors

from moeforge.chain.keys import keypair_from_uri, sign
from moeforge.network.checks import Reject, global_norm
from moeforge.network.commitment import commitment, encode_commitment, encode_result, encode_reveal
from moeforge.network.job import JobSpec
from moeforge.network.miner import Prepared
from moeforge.network.state import HEADER_SLACK_BYTES, backed_report, base_state, round_results
from moeforge.network.transport import MOMENTUM_PREFIX, Envelope, canonical_bytes, pack, unpack
from moeforge.store.protocol import Store, sha256_hex

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]
CommitMode = Literal["on_time", "after_peers", "late", "mismatch"]
RevealMode = Literal["on_time", "late", "after_commit_late"]


@dataclass(frozen=True)
class Context:
    """What an attack can use to forge round r's upload."""

    round: int
    job: JobSpec
    chain: object
    store: Store
    keypair: object  # the adversary's own hotkey
    leaked: Prepared | None  # an honest miner's submission of this round (None in a network without one)
    leaked_hotkey: str | None  # whose it is
    peers: Mapping[str, Prepared]  # every submission prepared before this one in the round
    seed: int


Forge = Callable[[Context], bytes | None]  # the bytes to upload; None: sit the round out


@dataclass(frozen=True)
class Attack:
    name: str  # attack class, as the bench table names it
    description: str
    expect: frozenset[Reject]  # reasons a validator may give; empty: judged on merits (see description)
    forge: Forge
    commit: CommitMode = "on_time"
    reveal: RevealMode = "on_time"


class Adversary:
    """A hotkey running one attack; driven like a Miner (prepare, commit, reveal) by InProcessNetwork."""

    def __init__(self, attack: Attack, *, chain, store: Store, keypair, job: JobSpec,
                 peers: Callable[[int], Mapping[str, Prepared]], victim: str | None, seed: int = 0):
        self.attack, self.chain, self.store, self.keypair, self.job = attack, chain, store, keypair, job
        self.hotkey = keypair.ss58_address
        self._peers, self.victim, self.seed = peers, victim, seed
        self.uploads: list[bytes] = []  # what it uploaded, round by round (tests check nothing is deserialised)

    def prepare(self, r: int) -> Prepared | None:
        peers = dict(self._peers(r))
        leaked = peers.get(self.victim) if self.victim else None
        data = self.attack.forge(Context(r, self.job, self.chain, self.store, self.keypair, leaked, self.victim, peers, self.seed + r))
        if data is None:
            return None
        base = leaked.base if leaked is not None else base_state(self.chain, self.store, self.job, r)
        return Prepared(r, data, sha256_hex(data), base, leaked.result if leaked else None, math.nan)

    def commit(self, prepared: Prepared | None) -> bool:
        if prepared is None or self.attack.commit == "late" or self.attack.reveal == "after_commit_late":
            return False
        if self.attack.commit == "after_peers":
            self.chain.step(1)  # the manual clock: land one block after the honest commitments
        digest = prepared.digest if self.attack.commit != "mismatch" else sha256_hex(prepared.data + b"other")
        self.chain.commit(self.keypair, encode_commitment(commitment(digest, self.hotkey, prepared.round), prepared.round))
        return True

    def reveal(self, prepared: Prepared | None) -> int | None:
        if prepared is None or self.attack.reveal == "late":
            return None
        if self.attack.commit == "late" or self.attack.reveal == "after_commit_late":
            r = prepared.round  # commit now, after the commit deadline, then reveal in a later block
            self.chain.commit(self.keypair, encode_commitment(commitment(prepared.digest, self.hotkey, r), r))
            self.chain.step(1)
        return self._reveal(prepared)

    def after_reveal_deadline(self, prepared: Prepared | None) -> None:
        if prepared is not None and self.attack.reveal == "late":
            self._reveal(prepared)
            self.chain.step(1)  # so the late reveal is on chain when the validators look

    def _reveal(self, prepared: Prepared) -> int:
        self.store.put(prepared.data)
        self.uploads.append(prepared.data)
        return self.chain.commit(self.keypair, encode_reveal(prepared.digest, prepared.round))


def register(chain, name: str):
    """A dev keypair //moeforge/adversary/<name>, registered on `chain`."""
    key = keypair_from_uri(f"//moeforge/adversary/{name}")
    if chain.metagraph().by_hotkey(key.ss58_address) is None:
        chain.register(key.ss58_address)
    return key


# --- forging helpers --------------------------------------------------------------------------------


def leaked_tensors(ctx: Context) -> Tensors:
    """The leaked honest delta's tensors (the starting point of most attacks)."""
    _, tensors = unpack(ctx.leaked.data)
    return {k: tensors[k].clone() for k in sorted(tensors)}  # sorted: safetensors' dict order varies, seeded noise must not


def signed(ctx: Context, tensors: Mapping[str, torch.Tensor], keypair=None) -> bytes:
    """`tensors` packed and signed as this adversary's (or `keypair`'s) round delta."""
    return pack(tensors, keypair=keypair or ctx.keypair, job=ctx.job.job_id, round=ctx.round, kind="delta")


def signed_raw(ctx: Context, tensors: Mapping[str, torch.Tensor]) -> bytes:
    """A correctly signed payload whatever the keys (transport.pack refuses non-expert keys; an attacker need not).

    The digest follows transport's documented format; the slots are the job's, as an honest header has.
    """
    flat = {k: t.contiguous() for k, t in tensors.items()}
    unsigned = save_safetensors(flat)
    n = int.from_bytes(unsigned[:8], "little")
    header = json.loads(unsigned[8 : 8 + n])
    digest = hashlib.sha256()
    for name in sorted(k for k in header if k != "__metadata__"):
        entry = header[name]
        digest.update(json.dumps([name, entry["dtype"], entry["shape"]], separators=(",", ":")).encode("ascii") + b"\n")
        begin, end = entry["data_offsets"]
        digest.update(unsigned[8 + n + begin : 8 + n + end])
    envelope = Envelope(hotkey=ctx.keypair.ss58_address, job=ctx.job.job_id, round=ctx.round, kind="delta",
                        slots=tuple(ctx.job.slots), payload_sha256=digest.hexdigest())
    fields = json.loads(canonical_bytes(envelope)[len(b"moeforge.payload.v1\n"):])
    return save_safetensors(flat, metadata={**fields, "signature": sign(ctx.keypair, canonical_bytes(envelope)).hex()})


def _with_header(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _with_expert(name: str, expert: int) -> str:
    parts = name.split(".")
    parts[parts.index("experts") + 1] = str(expert)
    return ".".join(parts)


def _first(tensors: Tensors) -> str:
    return sorted(tensors)[0]


def _layer_and_block(tensors: Tensors) -> tuple[int, str]:
    name = _first(tensors)  # model.layers.L.<block>.experts.E.<part>
    parts = name.split(".")
    i = parts.index("experts")
    return int(parts[2]), ".".join(parts[3:i])


# --- the attacks ------------------------------------------------------------------------------------


def _poison(value: float) -> Forge:
    def forge(ctx):
        t = leaked_tensors(ctx)
        t[_first(t)].view(-1)[len(t[_first(t)].view(-1)) // 2] = value
        return signed(ctx, t)
    return forge


def _nan_batches(ctx):
    """An assigned expert blown up (finite, 1e30): every token routed to it overflows, other batches stay finite."""
    t = leaked_tensors(ctx)
    g = torch.Generator().manual_seed(ctx.seed)
    for name in sorted(t)[-3:]:  # the last slot's tensors (gate, up, down of one expert)
        if "gate_proj" in name or "up_proj" in name:
            t[name] = t[name] + 1e30 * torch.randn(t[name].shape, generator=g, dtype=t[name].dtype)
    return signed(ctx, t)


def _extra_key(kind: str) -> Forge:
    def forge(ctx):
        t = leaked_tensors(ctx)
        layer, block = _layer_and_block(t)
        like = t[_first(t)]
        assigned = {s.expert for s in ctx.job.slots if s.layer == layer}
        other = next(e for e in range(10_000) if e not in assigned)
        key = {
            "embeddings": "model.embed_tokens.weight",
            "router": f"model.layers.{layer}.{block}.gate.weight",
            "attention": f"model.layers.{layer}.self_attn.q_proj.weight",
            "norm": f"model.layers.{layer}.input_layernorm.weight",
            "other_expert": _with_expert(_first(t), other),
        }[kind]
        t[key] = 1e-3 * torch.ones_like(like)
        return signed(ctx, t) if kind == "other_expert" else signed_raw(ctx, t)
    return forge


def _missing_key(ctx):
    t = leaked_tensors(ctx)
    del t[_first(t)]
    return signed(ctx, t)


def _wrong_shape(ctx):
    t = leaked_tensors(ctx)
    t[_first(t)] = t[_first(t)][:-1].clone()
    return signed(ctx, t)


def _wrong_dtype(ctx):
    t = leaked_tensors(ctx)
    return signed(ctx, {k: v.to(torch.bfloat16) for k, v in t.items()})


def _scaled(factor: float) -> Forge:
    return lambda ctx: signed(ctx, {k: factor * v for k, v in leaked_tensors(ctx).items()})


def _copy(noise: float) -> Forge:
    def forge(ctx):
        t = leaked_tensors(ctx)
        if noise:
            g = torch.Generator().manual_seed(ctx.seed)
            t = {k: v + noise * v.std() * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in t.items()}
        return signed(ctx, t)
    return forge


def _reupload(ctx):
    """The victim's own signed upload, revealed under the adversary's hotkey."""
    return ctx.leaked.data


def _other_signer(ctx):
    """Its tensors, signed by a second hotkey it controls (the reveal is from the first)."""
    return signed(ctx, leaked_tensors(ctx), keypair=keypair_from_uri(f"//moeforge/adversary/accomplice/{ctx.seed}"))


def _forged(field: str) -> Forge:
    def forge(ctx):
        data = signed(ctx, leaked_tensors(ctx))
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        meta = header["__metadata__"]
        if field == "signature":
            sig = bytearray(bytes.fromhex(meta["signature"]))
            sig[0] ^= 0xFF
            meta["signature"] = sig.hex()
        elif field == "round":
            meta["round"] = str(ctx.round + 1)  # a header field changed after signing
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + data[8 + n :]
    return forge


def _tampered(ctx):
    data = bytearray(signed(ctx, leaked_tensors(ctx)))
    data[-3] ^= 0x01  # one tensor byte changed after signing
    return bytes(data)


def _oversized(ctx):
    """One byte over the largest delta a validator accepts for this job (its float64 size plus header slack)."""
    _, tensors = unpack(ctx.leaked.data)
    return b"\0" * (sum(t.numel() * 8 for t in tensors.values()) + HEADER_SLACK_BYTES + 1)


def _malformed(kind: str) -> Forge:
    def forge(ctx):
        if kind == "header_length":
            return struct.pack("<Q", 1 << 20) + b'{"a": 1}'  # claims more header than there are bytes
        if kind == "huge_header":
            return struct.pack("<Q", 1 << 40) + b"{}"
        entry = {"dtype": "F32", "shape": [2, 2]}
        if kind == "overlapping":
            header = {"model.layers.1.mlp.experts.0.gate_proj.weight": {**entry, "data_offsets": [0, 16]},
                      "model.layers.1.mlp.experts.0.up_proj.weight": {**entry, "data_offsets": [8, 24]}}
            return _with_header(header, bytes(24))
        if kind == "out_of_range":
            header = {"model.layers.1.mlp.experts.0.gate_proj.weight": {**entry, "data_offsets": [0, 1 << 40]}}
            return _with_header(header, bytes(16))
        raise ValueError(kind)
    return forge


class _Canary:
    """Unpickling this creates a file: proof that the payload was deserialised."""

    path = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def canary_path(hotkey: str, round: int) -> Path:
    """The file a pickled canary creates when it is unpickled (tests assert it never exists)."""
    return Path(tempfile.gettempdir()) / f"moeforge-pickle-canary-{hotkey}-{round}"


def _pickled(kind: str) -> Forge:
    def forge(ctx):
        canary = _Canary()
        canary.path = str(canary_path(ctx.keypair.ss58_address, ctx.round))
        if kind == "pickle":
            return pickle.dumps({"model.layers.1.mlp.experts.0.gate_proj.weight": canary})
        import io

        buf = io.BytesIO()
        torch.save({"tensor": torch.zeros(4), "canary": canary}, buf)
        return buf.getvalue()
    return forge


def _replay(ctx):
    """Round r − 1's winning accepted delta (public: the report names its digest), re-signed for round r."""
    if ctx.round == 0:
        return None
    won = backed_report(ctx.store, round_results(ctx.chain, ctx.job, ctx.round - 1))
    if won is None:
        return None
    report = won[2]
    digests = {v.hotkey: v.digest for v in report.verdicts if v.accepted and v.digest}
    best = report.best_hotkey if report.best_hotkey in digests else next(iter(digests), None)
    if best is None:
        return None
    _, tensors = unpack(ctx.store.get(digests[best]))
    return signed(ctx, tensors)


def adopted_update(ctx: Context) -> Tensors | None:
    """The update the last round that changed the state adopted (its state − its base; both public), or None."""
    if ctx.round == 0:
        return None
    after = base_state(ctx.chain, ctx.store, ctx.job, ctx.round)
    if after.round < 0:
        return None
    before = base_state(ctx.chain, ctx.store, ctx.job, after.round)
    _, new = unpack(ctx.store.get(after.digest))
    _, old = unpack(ctx.store.get(before.digest))
    return {k: (new[k].double() - old[k].double()) for k in new if not k.startswith(MOMENTUM_PREFIX)}


def _replay_update(ctx):
    """The update round r − 1 adopted, submitted as a delta."""
    update = adopted_update(ctx)
    return None if update is None else signed(ctx, update)


def _at_cosine(tensors: Tensors, cosine: float, seed: int) -> Tensors:
    """`tensors` plus Gaussian noise sized so that the result's cosine with them is about `cosine` (per tensor)."""
    g = torch.Generator().manual_seed(seed)
    ratio = math.tan(math.acos(cosine))  # noise norm / signal norm
    out = {}
    for k, v in tensors.items():
        noise = torch.randn(v.shape, generator=g, dtype=torch.float64)
        out[k] = (v.double() + ratio * v.double().norm() / noise.norm() * noise).to(v.dtype)
    return out


def _free_rider(ctx):
    """Never trains: the last adopted update (public in the store), × 0.9 plus noise to cosine 0.95, so that
    neither its digest nor a cosine of 0.99 matches the update it rides on."""
    update = adopted_update(ctx)
    if update is None:
        return None
    return signed(ctx, _at_cosine({k: 0.9 * v for k, v in update.items()}, 0.95, ctx.seed))


def _diluted_copy(ctx):
    """A leaked honest delta of the round plus noise to cosine 0.9 with it: below any copy threshold that
    honest miners' deltas could trip."""
    return signed(ctx, _at_cosine(leaked_tensors(ctx), 0.9, ctx.seed))


def _same_block_copy(ctx):
    """The victim's delta with noise at 1e-4 of its scale, committed in the victim's block, the noise seed ground until
    the commitment hash sorts below the victim's (so an order by hash would name the victim the copier). A victim whose
    hash is itself near zero may outlast the grind (each try wins with probability hash/2^256); the copier then submits
    its lowest try anyway, as a real one would: the copy is still a copy."""
    victim = commitment(ctx.leaked.digest, ctx.leaked_hotkey, ctx.round)
    tensors = leaked_tensors(ctx)
    best = None
    for tries in range(1, _GRIND_TRIES + 1):
        g = torch.Generator().manual_seed(ctx.seed * 1000 + tries)
        data = signed(ctx, {k: v + 1e-4 * v.std() * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in tensors.items()})
        ours = commitment(sha256_hex(data), ctx.keypair.ss58_address, ctx.round)
        if ours < victim:
            log.info("same-block copy: commitment ground below the victim's in %d tries", tries)
            return data
        if best is None or ours < best[0]:
            best = (ours, data)
    log.warning("same-block copy: no commitment below the victim's in %d tries; submitting the lowest", _GRIND_TRIES)
    return best[1]


_GRIND_TRIES = 1024  # fails with probability 1/1025 over a uniform victim hash


def _minimal_effort(ctx):
    """Does some real work, a quarter of it: H/4 optimizer steps on its own shard, its delta then rescaled to the median
    norm of the round's other submissions (the worst case: it saw them all), so a share that followed norms would
    equal theirs."""
    from moeforge.network.jobdata import decode_train_rows, shard
    from moeforge.network.shards import miner_shard

    job = ctx.job
    rows = decode_train_rows(ctx.store.get(job.train_data), seq_len=job.seq_len, rows=job.train_rows)
    indices = miner_shard(rows.input_ids.shape[0], job.job_id, ctx.round, ctx.keypair.ss58_address, job.shard_rows)
    steps = max(1, job.inner_steps // 4)
    delta = _train_from_base(ctx, shard(rows, indices), job.miner_train_config().model_copy(update={"steps": steps}))
    norms = sorted(float(global_norm(unpack(p.data)[1])) for p in ctx.peers.values() if p is not None)
    tensors = delta.state_dict()
    if norms:
        scale = norms[len(norms) // 2] / float(global_norm(tensors))
        tensors = {k: scale * v for k, v in tensors.items()}
    return signed(ctx, tensors)


def _train_from_base(ctx: Context, rows, config):
    """An ESFT delta trained on `rows` from round r's base state, as a miner would."""
    from moeforge.model.load import load_model
    from moeforge.model.slices import apply_slice, extract_slice
    from moeforge.network.state import fetch_state
    from moeforge.train.esft import train_experts

    job = ctx.job
    model = load_model(job.base_model)
    reference = extract_slice(model, job.slots, job.base_fingerprint)
    apply_slice(model, fetch_state(ctx.store, base_state(ctx.chain, ctx.store, job, ctx.round), job=job, reference=reference))
    delta, _ = train_experts(model, job.slots, rows, config, base_fingerprint=job.base_fingerprint)
    return delta


def _sybil(ctx):
    """The group's one delta, from each member: its own, not a copy of anyone's (here the opposite of an honest
    delta, whose merits are none; the point is that only one member of the group is judged at all)."""
    return signed(ctx, {k: -v for k, v in leaked_tensors(ctx).items()})


def _overfit(ctx):
    """Train hard on the train rows at the indices an earlier round's public seed drew from the held-out split."""
    from moeforge.network.jobdata import decode_train_rows, shard
    from moeforge.network.shards import eval_samples

    job = ctx.job
    seed_block = job.schedule.seed_block(ctx.round - 1) if ctx.round > 0 else ctx.chain.block()
    guess, _ = eval_samples(job.heldout_rows, ctx.chain.block_hash(seed_block), job.score_rows, job.merge_rows)
    rows = decode_train_rows(ctx.store.get(job.train_data), seq_len=job.seq_len, rows=job.train_rows)
    visible = [i % rows.input_ids.shape[0] for i in guess]
    config = job.miner_train_config().model_copy(update={"steps": 4 * job.inner_steps, "lr": 3 * job.train.lr})
    return signed(ctx, _train_from_base(ctx, shard(rows, visible), config).state_dict())


def _honest(ctx):
    """The leaked honest delta, re-signed: with `commit="mismatch"` or a late mode only the protocol is wrong."""
    return signed(ctx, leaked_tensors(ctx))


_R = Reject
ATTACKS: dict[str, Attack] = {a.name: a for a in [
    Attack("nan", "one NaN in an honest delta", frozenset({_R.NON_FINITE}), _poison(math.nan)),
    Attack("inf", "one +inf in an honest delta", frozenset({_R.NON_FINITE}), _poison(math.inf)),
    Attack("nan_batches", "an assigned expert blown up to 1e30: finite values, non-finite loss on the batches routed to it "
           "(NORM_BOUND under a sane bound; NON_FINITE_LOSS when the bound is loose)", frozenset({_R.NORM_BOUND, _R.NON_FINITE_LOSS}), _nan_batches),
    Attack("key_embeddings", "adds the token embeddings", frozenset({_R.WRONG_KEYS}), _extra_key("embeddings")),
    Attack("key_router", "adds a router", frozenset({_R.WRONG_KEYS}), _extra_key("router")),
    Attack("key_attention", "adds an attention projection", frozenset({_R.WRONG_KEYS}), _extra_key("attention")),
    Attack("key_norm", "adds a norm", frozenset({_R.WRONG_KEYS}), _extra_key("norm")),
    Attack("key_other_expert", "adds a routed expert not assigned", frozenset({_R.WRONG_KEYS}), _extra_key("other_expert")),
    Attack("key_missing", "leaves out an assigned tensor", frozenset({_R.WRONG_KEYS}), _missing_key),
    Attack("wrong_shape", "one tensor a row short", frozenset({_R.WRONG_SHAPE}), _wrong_shape),
    Attack("wrong_dtype", "bfloat16 instead of the delta dtype", frozenset({_R.WRONG_DTYPE}), _wrong_dtype),
    Attack("huge_norm", "an honest delta × 1000", frozenset({_R.NORM_BOUND}), _scaled(1000.0)),
    Attack("zero_delta", "all zeros: replays the current state", frozenset({_R.ZERO_DELTA}), _scaled(0.0)),
    Attack("copy", "another miner's delta re-signed, committed a block later", frozenset({_R.COPY}), _copy(0.0), commit="after_peers"),
    Attack("copy_noise", "a copy plus 5% noise, committed a block later", frozenset({_R.COPY}), _copy(0.05), commit="after_peers"),
    Attack("replay", "round r − 1's winning delta, re-signed (new digest)", frozenset({_R.REPLAY}), _replay),
    Attack("replay_update", "round r − 1's adopted update (state − base) as a delta", frozenset({_R.REPLAY}), _replay_update),
    Attack("sybil", "several hotkeys submit one delta in one block: one at most is judged, the rest are copies",
           frozenset({_R.COPY}), _sybil),
    Attack("reupload", "another miner's signed upload revealed as its own", frozenset({_R.BAD_SIGNATURE}), _reupload),
    Attack("other_signer", "signed by another hotkey than the one that commits", frozenset({_R.BAD_SIGNATURE}), _other_signer),
    Attack("forged_signature", "signature bytes altered", frozenset({_R.BAD_SIGNATURE}), _forged("signature")),
    Attack("forged_round", "the signed round changed after signing", frozenset({_R.BAD_SIGNATURE}), _forged("round")),
    Attack("tampered_tensors", "a tensor byte changed after signing", frozenset({_R.MALFORMED}), _tampered),
    Attack("commitment_mismatch", "reveals another digest than it committed to", frozenset({_R.COMMITMENT_MISMATCH}), _honest, commit="mismatch"),
    Attack("late_commit", "commits after the commit deadline, then reveals", frozenset({_R.LATE}), _honest, commit="late"),
    Attack("late_reveal", "reveals after the reveal deadline", frozenset({_R.LATE}), _honest, reveal="late"),
    Attack("oversized", "an upload one byte over the job's delta size", frozenset({_R.TOO_LARGE}), _oversized),
    Attack("bad_header_length", "header length past the end of the payload", frozenset({_R.MALFORMED}), _malformed("header_length")),
    Attack("huge_header", "a 1 TiB header length", frozenset({_R.MALFORMED, _R.TOO_LARGE}), _malformed("huge_header")),
    Attack("overlapping_offsets", "two tensors over the same bytes", frozenset({_R.MALFORMED}), _malformed("overlapping")),
    Attack("out_of_range_offsets", "a tensor past the end of the data", frozenset({_R.MALFORMED}), _malformed("out_of_range")),
    Attack("pickle", "a pickle whose loading would run code (a canary file)", frozenset({_R.MALFORMED}), _pickled("pickle")),
    Attack("torch_save", "a torch.save zip with a pickled canary", frozenset({_R.MALFORMED}), _pickled("torch_save")),
    Attack("free_rider", "never trains: the last adopted update × 0.9 plus noise to cosine 0.95 (public in the store)",
           frozenset({_R.NO_EVIDENCE, _R.NO_IMPROVEMENT, _R.REPLAY}), _free_rider),
    Attack("diluted_copy", "a leaked honest delta plus noise to cosine 0.9, committed a block later",
           frozenset({_R.NO_EVIDENCE, _R.NO_IMPROVEMENT}), _diluted_copy, commit="after_peers"),
    Attack("same_block_copy", "a copy committed in the victim's block with its commitment hash ground below the victim's",
           frozenset({_R.COPY}), _same_block_copy),
    Attack("minimal_effort", "H/4 optimizer steps on its own shard, rescaled to the median norm: judged on merits, "
           "paid at most its measured marginal contribution", frozenset(), _minimal_effort),
    Attack("overfit", "trains 4× the steps at 3× the rate on the train rows at the indices a public seed drew "
           "(its best guess at the eval rows): judged on merits, it must not out-score honest miners", frozenset(), _overfit),
]}


SHARD_EVIDENCE = ("same_block_copy", "free_rider", "diluted_copy", "minimal_effort")  # answered by own-shard evidence (a job
# that requires it, evidence.py); the others need none


def adversaries(net, names, *, victim: str, seed: int = 0, sybils: int = 3) -> list[Adversary]:
    """Adversaries for `names` registered on `net`'s chain and appended to `net.miners` (after the honest ones).

    `victim` is the honest miner whose submission leaks to them; "sybil" adds a group of `sybils` hotkeys.
    """
    out = []
    for name in names:
        for i in range(sybils if name == "sybil" else 1):
            key = register(net.chain, f"{name}/{i}/{seed}")
            out.append(Adversary(ATTACKS[name], chain=net.chain, store=net.store, keypair=key, job=net.owner.job,
                                 peers=lambda r: net.prepared.get(r, {}), victim=victim, seed=seed))
    net.miners.extend(out)
    return out


class DishonestValidator:
    """Judges like `inner`, then publishes a wrong merged state (the honest one plus noise) with a matching report."""

    def __init__(self, inner, *, noise: float = 0.1, seed: int = 0):
        self.inner, self.noise, self.seed = inner, noise, seed
        self.hotkey = inner.hotkey
        self.published: dict[int, str] = {}  # round → the wrong state's sha256

    def score_round(self, r: int):
        from moeforge.network.state import pack_state, unpack_state

        inner = self.inner
        honest = inner.score_round(r)
        state = unpack_state(inner.store.get(honest.state_digest), job=inner.job, reference=inner.current, expect_sha256=honest.state_sha256)
        g = torch.Generator().manual_seed(self.seed + r)
        weights = {}
        for slot, w in state.weights.items():
            parts = {k: v + self.noise * v.std() * torch.randn(v.shape, generator=g, dtype=v.dtype) if v is not None else None
                     for k, v in vars(w).items()}
            weights[slot] = dataclasses.replace(w, **parts)
        wrong = dataclasses.replace(state, weights=weights)
        data, sha256 = pack_state(wrong, keypair=inner.keypair, job_id=inner.job.job_id, round=r)
        digest = inner.store.put(data)
        report = honest.model_copy(update={"state_sha256": sha256, "state_digest": digest, "choice": "merged"})
        report_digest = inner.store.put(report.model_dump_json().encode("utf-8"))
        inner.chain.commit(inner.keypair, encode_result(sha256, report_digest, r))
        self.published[r] = sha256
        log.info("dishonest validator %s: round %d published wrong state %s…", self.hotkey[:10], r, sha256[:12])
        return report
