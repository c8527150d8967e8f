"""open_library: a catalog (the index) and a store (the blobs) that together are one expert library.

Every read goes through the store, which re-hashes what it returns, and an entry's manifest must
hash to the entry's id, so a row whose blobs are missing or altered is never served: it raises
here, and `verify` lists it.
"""

from dataclasses import dataclass

from moeforge.errors import ArtifactNotFound, DataError, MoeforgeError
from moeforge.library.catalog import Catalog, open_catalog
from moeforge.library.entry import EntryManifest, canonical_bytes, entry_id, experts_slice, parse_manifest
from moeforge.store.protocol import Store


@dataclass(frozen=True)
class Problem:
    entry: str
    what: str


class Library:
    def __init__(self, catalog: Catalog, store: Store):
        self.catalog, self.store = catalog, store

    def put(self, manifest: EntryManifest) -> tuple[str, bool]:
        """Store the manifest (its blobs must be in the store already) and index it; (id, new)."""
        for digest in (manifest.experts, manifest.profile):
            if digest is not None and not self.store.exists(digest):
                raise ArtifactNotFound(f"blob {digest[:12]}… of the entry is not in the library's store {self.store.url}.")
        self._check_lineage(entry_id(manifest), manifest)
        new_id = self.store.put(canonical_bytes(manifest))
        return new_id, self.catalog.add(new_id, manifest)

    def _check_lineage(self, new_id: str, manifest: EntryManifest) -> None:
        """Every parent is an entry of this library, and the lineage above it is acyclic and does not hold the new entry
        (earnings flow up the lineage, so a cycle would pay forever): a DataError naming the cycle otherwise."""
        for parent in manifest.parents:
            try:
                self.catalog.get(parent.entry)
            except ArtifactNotFound:
                raise DataError(f"parent {parent.entry[:12]}… of the new entry is not in this library's catalog "
                                f"{self.catalog.url}: deposit the parent first.") from None
        done: set[str] = set()

        def visit(entry: str, path: tuple[str, ...]) -> None:
            if entry in path:
                raise DataError(f"cyclic lineage refused at deposit: {' → '.join(e[:12] for e in (*path, entry))}.")
            if entry in done:
                return
            for parent, _, _ in self.catalog.parents(entry):
                visit(parent, (*path, entry))
            done.add(entry)

        for parent in manifest.parents:
            visit(parent.entry, (new_id,))

    def manifest(self, entry: str) -> EntryManifest:
        """The manifest of an entry (an id or a prefix of one), read from the store and checked against its id."""
        entry_id = self.catalog.resolve(entry) if len(entry) != 64 else entry
        self.catalog.get(entry_id)  # an id the catalog does not know is not part of this library
        data = self._blob(entry_id, entry_id, "manifest")
        return parse_manifest(data, f"library entry {entry_id[:12]}…")

    def experts(self, manifest: EntryManifest, entry_id: str):
        """The entry's expert weights (an `experts` ExpertSlice)."""
        return experts_slice(manifest, self._blob(entry_id, manifest.experts, "expert tensors"), f"library entry {entry_id[:12]}…")

    def profile(self, manifest: EntryManifest, entry_id: str):
        from moeforge.profile.profile_file import RoutingProfile

        if manifest.profile is None:
            return None
        data = self._blob(entry_id, manifest.profile, "routing profile")
        try:
            return RoutingProfile.model_validate_json(data)
        except ValueError as exc:
            raise DataError(f"library entry {entry_id[:12]}…: its routing profile does not parse ({exc}).") from None

    def verify(self, entry_ids: list[str] | None = None) -> tuple[int, list[Problem]]:
        """(entries checked, problems): every blob of every row (retired ones too) present and re-hashing, every
        manifest agreeing with its row."""
        ids = entry_ids if entry_ids is not None else [e.id for e in self.catalog.entries(include_retired=True)]
        problems = []
        for entry_id in ids:
            try:
                manifest = self.manifest(entry_id)
                row = self.catalog.get(entry_id)
                if (row.base_fingerprint, row.domain, row.n_slots) != (manifest.base_fingerprint, manifest.domain, len(manifest.slots)):
                    raise DataError("the catalog row disagrees with the manifest (base, domain or slot count)")
                self.experts(manifest, entry_id)
                self.profile(manifest, entry_id)
            except MoeforgeError as exc:
                problems.append(Problem(entry_id, str(exc)))
        return len(ids), problems

    def _blob(self, entry_id: str, digest: str, what: str) -> bytes:
        try:
            return self.store.get(digest)
        except ArtifactNotFound:
            raise ArtifactNotFound(f"library entry {entry_id[:12]}…: its {what} ({digest[:12]}…) is missing from the store "
                                   f"{self.store.url}; run `moeforge library verify`.") from None
        except MoeforgeError as exc:
            raise DataError(f"library entry {entry_id[:12]}…: its {what} ({digest[:12]}…) is corrupt ({exc}); "
                            "run `moeforge library verify`.") from None


def open_library(catalog_url: str, store_url: str, *, migrate: bool | None = None, credentials=None) -> Library:
    from moeforge.store.open import open_store

    return Library(open_catalog(catalog_url, migrate=migrate), open_store(store_url, credentials=credentials))

