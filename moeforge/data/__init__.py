"""Job data: readers, formatting, packing, splits, fingerprints and the vendored corpora."""
