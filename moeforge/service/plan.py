"""A job's plan, shown before it runs: the experts selected and why, the library match, memory per mode, estimates.

The worker profiles the job's train split (the held-out split is never profiled, as the owner does),
selects experts by the job's rule (ESFT-Token, p = 0.2, by default), ranks the library entries the
tenant may use by routing similarity and loss on a sample (`library/match.py`), and decides the
warm start; the owner then runs with exactly that selection and those entries.
"""

from pathlib import Path

from moeforge.extract.package import MODES
from moeforge.library.open import Library

PLAN_FILES = {"experts": "experts.json", "profile": "profile.json", "heatmap": "heatmap.png"}


class VisibleCatalog:
    """A catalog that shows only the entries in `allowed` (the tenant's own and the shared ones)."""

    def __init__(self, catalog, allowed: set[str]):
        self._catalog, self._allowed = catalog, allowed

    def entries(self, **filters):
        return [e for e in self._catalog.entries(**filters) if e.id in self._allowed]

    def __getattr__(self, name):
        return getattr(self._catalog, name)


def make_plan(request, records, *, salt: str, library: Library, allowed: set[str], run_dir: Path, miners: int,
              device: str = "cpu") -> dict:
    """Write experts.json, profile.json and heatmap.png in `run_dir`; → the plan (a JSON-able dict)."""
    from moeforge.cli.inputs import load_checkpoint
    from moeforge.errors import DataError
    from moeforge.network.jobdata import pack_rows, split_job
    from moeforge.library.match import chosen, match_records
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.profile.heatmap import plot_profile
    from moeforge.profile.profile_file import save_profile
    from moeforge.profile.selection import save_expert_config, select_experts
    from moeforge.profile.stats import ProfileConfig, default_seq_len, profile_records

    model, tokenizer = load_checkpoint(request.base_model, device)
    fingerprint = model_fingerprint(model)
    seq_len = request.seq_len or default_seq_len(model)  # as the owner will: the same split, the same rows
    splits = split_job(records, salt, validation=request.validation, heldout=request.heldout)
    held = int(pack_rows(splits.heldout, tokenizer, seq_len).input_ids.shape[0])
    if request.score_rows + request.merge_rows > held:
        raise DataError(f"the data's held-out split packs into {held} rows of {seq_len} tokens, fewer than the "
                        f"{request.score_rows + request.merge_rows} the validators score and merge on; upload more "
                        f"records ({len(records)} now)")
    profile = profile_records(model, tokenizer, splits.train, ProfileConfig(tokens=request.profile_tokens, seq_len=seq_len),
                              base_fingerprint=fingerprint)
    selection = select_experts(profile, request.select)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_expert_config(selection, run_dir / PLAN_FILES["experts"])
    save_profile(profile, run_dir / PLAN_FILES["profile"])
    plot_profile(profile, run_dir / PLAN_FILES["heatmap"], title=f"routing of {request.domain} data (train split)")
    view = Library(VisibleCatalog(library.catalog, allowed), library.store)
    selected = {(int(layer), e) for layer, experts in selection.experts.items() for e in experts}
    ranking = match_records(view, model, tokenizer, splits.train, fingerprint, seq_len=seq_len, query=profile,
                            selected=selected)
    warm = chosen(ranking, request.warm_threshold) if request.warm_start == "auto" else []
    per_layer = {int(layer): len(experts) for layer, experts in selection.experts.items()}
    most = max(per_layer.values(), default=0)
    n_experts = selection.num_experts
    memory = miner_memory(model.config, request, trainable_per_layer=max(most, 1), seq_len=seq_len)
    rows_per_round = request.inner_steps * request.train.batch_size * request.shard_passes
    blocks = request.train_blocks + request.commit_blocks + request.reveal_blocks + request.score_blocks
    return {
        "base_fingerprint": fingerprint, "seq_len": seq_len,
        "records": {"train": len(splits.train), "validation": len(splits.validation), "held_out": len(splits.heldout)},
        "selection": {"method": selection.method, "p": selection.p, "score": request.select.score,
                      "experts": sum(per_layer.values()), "per_layer": {str(k): v for k, v in sorted(per_layer.items())},
                      "experts_per_layer": n_experts,
                      "why": f"the fewest experts per layer whose {request.select.score} routing share on the train split "
                             f"reaches p = {selection.p:g} (ESFT)"},
        "match": [{"entry": c.entry, "domain": c.domain, "similarity": round(c.similarity, 4),
                   "loss_gain": None if c.loss_gain is None else round(c.loss_gain, 5), "why": c.why()} for c in ranking[:5]],
        "warm_start": [c.entry for c in warm],
        "memory": memory,
        "estimate": {"rounds": request.rounds, "miners": miners,
                     "tokens": request.rounds * miners * min(rows_per_round, max(len(splits.train), 1)) * seq_len,
                     "max_seconds": round(request.rounds * blocks * request.block_seconds + request.start_delay_blocks * request.block_seconds)},
    }


def miner_memory(config, request, *, trainable_per_layer: int, seq_len: int) -> dict:
    """What one miner of each mode needs on its device for this job (extract/plan.py's device plan: weights, the
    trained experts' state and activations at the job's batch, sequence length and training options); a mode the base's
    family cannot run says why instead."""
    from moeforge.errors import ModelError
    from moeforge.extract.plan import plan_device

    train = request.train
    memory = {}
    for mode in MODES:
        try:
            plan = plan_device(config, mode, trainable_per_layer=trainable_per_layer, batch=train.batch_size, seq=seq_len,
                               checkpointing=train.activation_checkpointing, optimizer=train.optimizer,
                               loss_chunk_tokens=train.loss_chunk_tokens)
        except ModelError as exc:
            memory[mode] = {"unsupported": str(exc)}
            continue
        memory[mode] = {"bytes": plan.total, "fraction_of_full": round(plan.fraction_of_full, 4), "weights": plan.weights,
                        "trainable_state": plan.trainable_state, "activations": plan.activations,
                        "host_bytes": plan.host_experts, "card_gib": plan.card_gib}
    return memory
