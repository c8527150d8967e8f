"""The marketplace: listings of library entries with licences and prices, grants, verified usage, and earnings.

DESIGN.md "The Customization Centre and the marketplace". terms.py (licences, prices, visibility),
split.py (revenue split through lineage, exact to the smallest unit), usage.py (usage ledgers
verified and priced), ledger.py (the append-only double-entry ledger of earnings and statements),
search.py (filters and relevance by routing match).
"""
