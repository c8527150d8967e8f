"""Finding listings: filters in SQL, then an order: routing match to the searcher's data, text relevance, or a field.

"Find experts for my data": the searcher names one of its processed files; its records are
profiled once on the base (ESFT-Token shares, `SAMPLE_TOKENS` of them) and every listing on that
base is scored by the library's matcher, the cosine of background-subtracted log-ratio profiles
(library/match.py). Entries' profiles and the sample's are immutable, so both are cached.
Without a sample, a text query orders by where it matched (title, tags, domain, description) and
then by held-out gain.
"""

import json
import threading
from dataclasses import dataclass

SAMPLE_TOKENS = 4_096
SORTS = ("relevance", "newest", "gain", "price")
_TEXT_WEIGHTS = (("title", 4), ("tags", 3), ("domain", 2), ("description", 1))


@dataclass(frozen=True)
class Filters:
    q: str | None = None
    domain: str | None = None
    base_model: str | None = None
    licence: str | None = None
    price: str | None = None  # free | per_mtok | per_export
    max_price_micros: int | None = None
    min_gain: float | None = None
    mine: bool = False
    sort: str = "relevance"


def find(session, tenant_id: str, f: Filters) -> list:
    """The listings the tenant may see that pass the filters (ListingRow), in SQL order (newest first)."""
    from sqlalchemy import or_, select

    from moeforge.service.market.schema import ListingRow

    query = select(ListingRow)
    if f.mine:
        query = query.where(ListingRow.owner_tenant == tenant_id)
    else:
        query = query.where(or_(ListingRow.visibility != "private", ListingRow.owner_tenant == tenant_id))
    for column, value in ((ListingRow.domain, f.domain), (ListingRow.base_model, f.base_model), (ListingRow.licence_id, f.licence),
                          (ListingRow.price_kind, f.price)):
        if value is not None:
            query = query.where(column == value)
    if f.max_price_micros is not None:
        query = query.where(ListingRow.price_micros <= f.max_price_micros)
    if f.min_gain is not None:
        query = query.where(ListingRow.domain_gain >= f.min_gain)
    if f.q:
        like = "%" + f.q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"  # the text, not a pattern
        query = query.where(or_(*(column.ilike(like, escape="\\") for column in
                                  (ListingRow.title, ListingRow.description, ListingRow.tags, ListingRow.domain))))
    rows = list(session.scalars(query.order_by(ListingRow.created_at.desc(), ListingRow.id)))
    return [r for r in rows if _where(r, f.q.lower())] if f.q else rows  # SQL saw the tags' JSON text: keep real matches


def _where(row, text: str) -> list[str]:
    """The fields of the listing `text` is in (each tag on its own)."""
    return [name for name, _ in _TEXT_WEIGHTS if any(text in value.lower() for value in _values(row, name))]


def order(rows: list, f: Filters, similarity: dict[str, float] | None = None) -> list[tuple[object, dict | None]]:
    """(row, relevance) pairs in the order asked for; relevance says why a row ranks where it does."""
    if f.sort == "newest":
        return [(r, None) for r in rows]
    if f.sort == "gain":
        return [(r, None) for r in sorted(rows, key=lambda r: (-(r.domain_gain if r.domain_gain is not None else -1e9), r.id))]
    if f.sort == "price":
        return [(r, None) for r in sorted(rows, key=lambda r: (r.price_micros, r.id))]
    if similarity is not None:
        scored = [(r, similarity.get(r.entry_id)) for r in rows]
        scored.sort(key=lambda p: (p[1] is None, -(p[1] or 0.0), p[0].id))
        return [(r, {"score": None if s is None else round(s, 4),
                     "why": "routing similarity to your data " + (f"{s:.3f} (background-subtracted cosine)" if s is not None
                                                                  else "not measured (another base, or no routing profile)")})
                for r, s in scored]
    if f.q:
        text = f.q.lower()

        def score(r) -> tuple[int, list[str]]:
            where = _where(r, text)
            return sum(w for name, w in _TEXT_WEIGHTS if name in where), where

        scored = [(r, *score(r)) for r in rows]
        scored.sort(key=lambda p: (-p[1], -(p[0].domain_gain or 0.0), p[0].id))
        return [(r, {"score": s, "why": f"{f.q!r} found in the {', '.join(where)}"}) for r, s, where in scored]
    return [(r, None) for r in sorted(rows, key=lambda r: (-(r.domain_gain if r.domain_gain is not None else -1e9), r.id))]


def _values(row, name: str) -> list[str]:
    if name == "tags":
        return json.loads(row.tags or "[]")
    return [getattr(row, name) or ""]


class RoutingMatcher:
    """Similarity of the listings' entries to a sample's routing, with the vectors cached (they never change)."""

    def __init__(self, library):
        self.library = library
        self._lock = threading.Lock()
        self._entry: dict[tuple[str, str], object] = {}  # (entry, background digest) → log-ratio vector or None
        self._samples: dict[tuple[str, str], object] = {}  # (file sha256, base name) → (RoutingProfile, background)

    def similarity(self, sample, background, background_digest: str, entry_ids: list[str]) -> dict[str, float]:
        from moeforge.library.match import cosine, log_ratio

        target = log_ratio(sample, background)
        out = {}
        for entry in entry_ids:
            key = (entry, background_digest)
            with self._lock:
                cached = self._entry.get(key, False)
            if cached is False:
                manifest = self.library.manifest(entry)
                profile = self.library.profile(manifest, entry)
                ok = profile is not None and profile.layers == sample.layers and profile.num_experts == sample.num_experts
                cached = log_ratio(profile, background) if ok else None
                with self._lock:
                    self._entry[key] = cached
            if cached is not None:
                out[entry] = cosine(target, cached)
        return out

    def sample_profile(self, file_sha256: str, base: str, compute):
        """compute()'s (sample profile, background) for this file on this base, computed once."""
        key = (file_sha256, base)
        with self._lock:
            if key in self._samples:
                return self._samples[key]
        profile = compute()
        with self._lock:
            self._samples[key] = profile
        return profile
