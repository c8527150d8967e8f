"""The Proof-of-Loss subnet: round schedule, shards, commitments, checks, scoring, merge, ratings; the roles."""
