"""The chain: identities, stake, commitments and weights, behind one small Protocol (DESIGN.md "The network")."""
