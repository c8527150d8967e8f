"""A marketplace to test and benchmark on: synthetic library entries over a base's experts with random lineage trees,
their owners, and usage ledgers signed by a real `moeforge serve` ledger key (deploy/usage.py's Ledger).

Synthetic entries are real entries: the base's own experts nudged by seeded noise (so each entry's
content, and so its id, differs), a routing profile drawn around a domain's, metrics, 0-3 parents
among the entries made before it (a DAG by construction), and 1-4 miners with random shares.
"""

import random
from dataclasses import replace
from pathlib import Path

import torch

DOMAINS = ("math", "medical", "finance", "law", "python", "chemistry", "retail", "logistics")
LICENCES = ("Apache-2.0", "MIT", "CC-BY-4.0", "CC-BY-NC-4.0", "OpenRAIL")


def hotkey(rng: random.Random) -> str:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # base58, as an ss58 address reads
    return "5" + "".join(rng.choice(alphabet) for _ in range(47))


def _profile(base_profile, rng: random.Random, domain_index: int):
    """A routing profile around `base_profile`, tilted towards a few experts per layer chosen by the domain."""
    token, counts = {}, {}
    for layer in base_profile.layers:
        n = base_profile.num_experts
        weights = [p + 1e-3 for p in base_profile.token[layer]]
        for e in random.Random(domain_index * 1000 + layer).sample(range(n), max(1, n // 8)):
            weights[e] *= 6.0
        weights = [w * rng.uniform(0.8, 1.2) for w in weights]
        total = sum(weights)
        token[layer] = tuple(w / total for w in weights)
        slots = base_profile.tokens * base_profile.top_k
        raw = [int(t * slots) for t in token[layer]]
        for e in sorted(range(n), key=lambda e: raw[e] - token[layer][e] * slots)[:slots - sum(raw)]:
            raw[e] += 1  # the counts must sum to tokens × top_k exactly
        counts[layer] = tuple(raw)
    return base_profile.model_copy(update={"token": token, "gate": token, "counts": counts, "gate_sums": token,
                                           "saliency": None, "saliency_sums": None})


def synthetic_entries(library, model, base_profile, n: int, *, seed: int = 0, base_name: str = "testbed-small") -> list[str]:
    """Deposit `n` entries on `model` (whose routing of general text is `base_profile`); → their ids, oldest first."""
    from moeforge.library.deposit import deposit
    from moeforge.library.entry import Contributor, Metrics, Parent
    from moeforge.model.experts import ExpertSlot
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.model.slices import ExpertSlice, extract_slice

    rng = random.Random(seed)
    fingerprint = model_fingerprint(model)
    layers, n_experts = list(base_profile.layers), base_profile.num_experts
    ids: list[str] = []
    for i in range(n):
        domain_index = rng.randrange(len(DOMAINS))
        slots = sorted({ExpertSlot(rng.choice(layers), rng.randrange(n_experts)) for _ in range(rng.randint(1, 4))})
        base = extract_slice(model, slots, fingerprint)
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        weights = {slot: replace(w, gate=w.gate + 1e-3 * torch.randn(w.gate.shape, generator=g, dtype=w.gate.dtype))
                   for slot, w in base.weights.items()}
        experts = ExpertSlice(kind="experts", model_type=base.model_type, base_fingerprint=fingerprint, weights=weights)
        parents = tuple(Parent(entry=p, relation=rng.choice(("warm_start", "merge")), slots=rng.randint(1, 4))
                        for p in sorted(set(rng.sample(ids, min(len(ids), rng.choice((0, 0, 1, 1, 2, 3)))))))
        people = [hotkey(rng) for _ in range(rng.randint(1, 4))]
        raw = [rng.random() + 0.05 for _ in people]
        shares = [r / sum(raw) for r in raw]
        shares[-1] = 1 - sum(shares[:-1])
        before = rng.uniform(2.0, 4.0)
        metrics = Metrics(domain_loss_before=before, domain_loss_after=before - rng.uniform(0.0, 0.6), domain_tokens=4096,
                          general_ppl_before=120.0, general_ppl_after=120.0 * rng.uniform(0.99, 1.03))
        profile = _profile(base_profile, rng, domain_index)
        entry, _ = deposit(library, model, fingerprint, experts, profile_json=profile.model_dump_json().encode(),
                           base_model=base_name, domain=DOMAINS[domain_index], metrics=metrics, parents=parents,
                           contributors=tuple(Contributor(id=h, role="miner", share=s) for h, s in zip(people, shares)),
                           license=rng.choice(LICENCES), source="network", job_id=f"synthetic-{seed}-{i}")
        ids.append(entry)
    return ids


def own(database, entry: str, tenant_id: str, job_id: str = "synthetic") -> None:
    """Record `tenant_id` as the owner of `entry`, as a finished job of that tenant does."""
    from moeforge.service.db import now
    from moeforge.service.schema import EntryOwnerRow

    with database.session() as s:
        if s.get(EntryOwnerRow, (entry, tenant_id)) is None:
            s.add(EntryOwnerRow(entry_id=entry, tenant_id=tenant_id, job_id=job_id, created_at=now()))


def write_ledger(folder: Path, key: Path, entries: list[str], *, requests: int, seed: int = 0, model: str = "served",
                 tokens: tuple[int, int] = (200, 800)) -> tuple[Path, int]:
    """A day's ledger of `requests` requests routed over `entries` (and base experts), signed with `key` (made if
    absent); → (the ledger file, its prompt + completion tokens)."""
    from collections import Counter

    from moeforge.deploy.bundle import generate_key
    from moeforge.deploy.usage import Ledger

    if not key.is_file():
        generate_key(key)
    rng = random.Random(seed)
    mapping = {(0, i): (i, entry) for i, entry in enumerate(entries)}  # served expert i of layer 0 ↔ entry i
    ledger = Ledger(folder, key, model=model, mapping=mapping)
    total = 0
    for r in range(requests):
        prompt, completion = rng.randint(tokens[0] // 2, tokens[1] // 2), rng.randint(tokens[0] // 2, tokens[1] // 2)
        hits = Counter({(0, i): rng.randint(0, 3 * (prompt + completion) // max(1, len(entries)))
                        for i in rng.sample(range(len(entries)), min(len(entries), rng.randint(1, 3)))})
        hits[(1, 10_000)] = prompt + completion  # base experts: layer 1, an id no mapping names
        ledger.record(f"req-{seed}-{r}", kind="chat.completion", prompt_tokens=prompt, completion_tokens=completion,
                      experts=hits, finish_reason="stop")
        total += prompt + completion
    files = sorted(Path(folder).glob("usage-*.jsonl"))
    return files[-1], total
