"""Matching new job data to library entries: routing similarity against a background, then loss.

DESIGN.md "The library". Every domain routes much of its mass to the same generalist experts, so
the raw cosine of two routing profiles is high for any pair (0.58–0.72 across DeepSeek-V2-Lite's
shipped ESFT profiles). What tells domains apart is where a profile departs from the background:
per layer and expert, log(p_domain / p_background), with p the ESFT-Token share and the background
the base's profile on general text (WikiText-2), profiled once per base and kept in the catalog.
Entries are ranked by the cosine of those log-ratio vectors; the top few are then re-ranked by
what they do: the loss of base + entry on a sample of the new data against the base's own.
"""

import logging
import math
from dataclasses import asdict, dataclass

import torch

from moeforge.library.open import Library
from moeforge.profile.profile_file import RoutingProfile

log = logging.getLogger(__name__)

BACKGROUND_TOKENS = 16_384
SMOOTHING = 0.1  # of the uniform share 1/E added to both shares before the log-ratio, so unrouted experts stay finite
DEFAULT_RERANK = 3
DEFAULT_THRESHOLD = 0.3  # --warm-start auto takes a match this similar (and that lowers the sample's loss), else the base


@dataclass(frozen=True)
class Candidate:
    entry: str
    domain: str
    similarity: float  # cosine of background-subtracted log-ratio profiles
    raw_cosine: float  # cosine of the raw token shares, for comparison
    shared_slots: int  # slots the entry trained that the new job also selected (0 if no selection given)
    base_loss: float | None = None  # on the sample, base experts
    entry_loss: float | None = None  # on the sample, the entry's experts in place
    rank: int = 0

    @property
    def loss_gain(self) -> float | None:
        return None if self.base_loss is None or self.entry_loss is None else self.base_loss - self.entry_loss

    def why(self) -> str:
        text = f"routing similarity {self.similarity:.3f} (raw cosine {self.raw_cosine:.3f})"
        if self.loss_gain is not None:
            text += f", loss on the sample {self.base_loss:.4f} → {self.entry_loss:.4f} ({-self.loss_gain:+.4f})"
        else:
            text += ", not re-ranked by loss (outside the top few by similarity)"
        return text

    def to_json(self) -> dict:
        return {**asdict(self), "loss_gain": self.loss_gain, "why": self.why()}


def log_ratio(profile: RoutingProfile, background: RoutingProfile) -> torch.Tensor:
    """The profile's departure from the background: log((p + s/E) / (b + s/E)) over every (layer, expert), flattened."""
    eps = SMOOTHING / profile.num_experts
    parts = []
    for layer in profile.layers:
        p = torch.tensor(profile.token[layer], dtype=torch.float64)
        b = torch.tensor(background.token[layer], dtype=torch.float64)
        parts.append(torch.log((p + eps) / (b + eps)))
    return torch.cat(parts)


def raw_vector(profile: RoutingProfile) -> torch.Tensor:
    return torch.cat([torch.tensor(profile.token[layer], dtype=torch.float64) for layer in profile.layers])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denominator = float(a.norm() * b.norm())
    return float(a @ b) / denominator if denominator > 0 else 0.0


def background_profile(library: Library, model, tokenizer, fingerprint: str, *, seq_len: int) -> RoutingProfile:
    """The base's routing on general text (WikiText-2 validation), profiled once and kept in the library."""
    from moeforge.data.corpora import load_corpus
    from moeforge.eval.general import GENERAL_CORPUS
    from moeforge.profile.stats import ProfileConfig, profile_records

    digest = library.catalog.background(fingerprint)
    if digest is not None and library.store.exists(digest):
        return RoutingProfile.model_validate_json(library.store.get(digest))
    log.info("profiling the background (general text) routing of this base once: %d tokens", BACKGROUND_TOKENS)
    profile = profile_records(model, tokenizer, load_corpus(GENERAL_CORPUS, "train"),
                              ProfileConfig(tokens=BACKGROUND_TOKENS, seq_len=seq_len, saliency=False), base_fingerprint=fingerprint)
    digest = library.store.put(profile.model_dump_json().encode("utf-8"))
    library.catalog.set_background(fingerprint, digest, profile.tokens)
    return profile


def rank_by_routing(library: Library, query: RoutingProfile, background: RoutingProfile,
                    selected: set[tuple[int, int]] | None = None) -> list[Candidate]:
    """Every live entry on the query's base that has a routing profile, most similar first."""
    target, target_raw = log_ratio(query, background), raw_vector(query)
    candidates = []
    for row in library.catalog.entries(base_fingerprint=query.base_fingerprint):
        manifest = library.manifest(row.id)
        profile = library.profile(manifest, row.id)
        if profile is None or profile.layers != query.layers or profile.num_experts != query.num_experts:
            continue
        shared = len(selected & set(manifest.slots)) if selected else 0
        candidates.append(Candidate(entry=row.id, domain=row.domain, similarity=cosine(target, log_ratio(profile, background)),
                                    raw_cosine=cosine(target_raw, raw_vector(profile)), shared_slots=shared))
    return sorted(candidates, key=lambda c: (-c.similarity, c.entry))


def rerank_by_loss(library: Library, model, candidates: list[Candidate], input_ids, labels, *, top: int = DEFAULT_RERANK,
                   batch_size: int = 8) -> list[Candidate]:
    """Re-rank the first `top` candidates by the loss gain of their experts on (input_ids, labels); `model` ends as it began."""
    from moeforge.eval.domain import rows_loss
    from moeforge.model.slices import apply_slice, extract_slice

    head, tail = candidates[:top], candidates[top:]
    if not head:
        return []
    base_loss = rows_loss(model, input_ids, labels, batch_size=batch_size).loss
    scored = []
    for c in head:
        manifest = library.manifest(c.entry)
        experts = library.experts(manifest, c.entry)
        saved = extract_slice(model, experts.slots, experts.base_fingerprint)
        apply_slice(model, experts)
        try:
            loss = rows_loss(model, input_ids, labels, batch_size=batch_size).loss
        finally:
            apply_slice(model, saved)
        scored.append(Candidate(**{**asdict(c), "base_loss": base_loss, "entry_loss": loss}))
    scored.sort(key=lambda c: (-(c.loss_gain or -math.inf), -c.similarity))
    return [Candidate(**{**asdict(c), "rank": i + 1}) for i, c in enumerate(scored + tail)]


def chosen(ranking: list[Candidate], threshold: float = DEFAULT_THRESHOLD) -> list[Candidate]:
    """What `--warm-start auto` takes: the re-ranked candidates above the similarity threshold whose experts lower the
    sample's loss, best first."""
    return [c for c in ranking if c.loss_gain is not None and c.loss_gain > 0 and c.similarity >= threshold]


def match_records(library: Library, model, tokenizer, records, fingerprint: str, *, seq_len: int, tokens: int = 16_384,
                  sample_rows: int = 16, top: int = DEFAULT_RERANK, selected: set[tuple[int, int]] | None = None,
                  query: RoutingProfile | None = None) -> list[Candidate]:
    """Rank the library's entries for `records` on this base: profile `tokens` of them (or take `query`), rank by
    routing against the background, re-rank the top few by loss on the first `sample_rows` packed rows."""
    from moeforge.eval.domain import packed_rows
    from moeforge.profile.stats import ProfileConfig, profile_records

    if not library.catalog.entries(base_fingerprint=fingerprint):
        return []  # nothing to match: spare the profiling
    if query is None:
        query = profile_records(model, tokenizer, records, ProfileConfig(tokens=tokens, seq_len=seq_len, saliency=False),
                                base_fingerprint=fingerprint)
    background = background_profile(library, model, tokenizer, fingerprint, seq_len=seq_len)
    ranking = rank_by_routing(library, query, background, selected)
    if not ranking:
        return []
    input_ids, labels = packed_rows(tokenizer, records, seq_len=seq_len, max_tokens=sample_rows * seq_len)
    return rerank_by_loss(library, model, ranking, input_ids, labels, top=top)
