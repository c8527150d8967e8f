"""The earnings ledger: append-only, double-entry, in integer micros; its reconciliation and payout statements.

A priced use of an entry (routed tokens of a usage report, or a flat-price export) is one
transaction: the customer's account is debited the revenue and split.py's postings credit the
platform's fee and every payee, so the lines of each transaction sum to zero, and for any period
revenue in = payouts + fee, to the micro. Accounts read `customer:<tenant>`, `tenant:<tenant>`
(an owner or a tenant contributor), `hotkey:<ss58>` (a miner) and `fee:platform`.
"""

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction

from moeforge.service.db import new_id, now
from moeforge.service.market.split import FEE_ACCOUNT, Node, split_revenue

CUSTOMER, TENANT, HOTKEY = "customer:", "tenant:", "hotkey:"


def lineage_nodes(session, subnet_owner: str | None):
    """node(entry) for split.py from the catalog (parents, contributors) and the Centre (who owns each entry)."""
    from sqlalchemy import select

    from moeforge.library.schema import ContributorRow, ParentRow
    from moeforge.service.market.schema import ListingRow
    from moeforge.service.schema import EntryOwnerRow

    cache: dict[str, Node] = {}

    def node(entry: str) -> Node:
        if entry in cache:
            return cache[entry]
        listing = session.scalar(select(ListingRow.owner_tenant).where(ListingRow.entry_id == entry))
        owner = listing or session.scalar(select(EntryOwnerRow.tenant_id).where(EntryOwnerRow.entry_id == entry)
                                          .order_by(EntryOwnerRow.created_at)) or subnet_owner
        if owner is None:
            raise ValueError(f"entry {entry[:12]}… has no owner and the Centre has no subnet owner to credit")
        account = TENANT + owner
        people = [(account if c.role == "owner" else HOTKEY + c.contributor, Fraction(repr(c.share)))
                  for c in session.scalars(select(ContributorRow).where(ContributorRow.entry_id == entry))]
        parents = [(p.parent_id, p.slots) for p in session.scalars(select(ParentRow).where(ParentRow.entry_id == entry))]
        cache[entry] = Node(owner=account, contributors=tuple(sorted(people)), parents=tuple(sorted(parents)))
        return cache[entry]

    return node


def post_revenue(session, *, kind: str, period: str, customer: str, entry: str, micros: int, source: str, node) -> str:
    """Append one balanced transaction for `micros` of revenue on `entry` paid by tenant `customer`; → its id."""
    from moeforge.service.market.schema import LedgerLineRow

    txn, when = new_id("txn"), now()
    postings = split_revenue(entry, micros, node)
    lines = [LedgerLineRow(txn=txn, period=period, kind=kind, account=CUSTOMER + customer, amount_micros=-micros,
                           entry_id=entry, origin_entry=entry, source=source, created_at=when)]
    lines += [LedgerLineRow(txn=txn, period=period, kind=kind, account=p.account, amount_micros=p.micros, entry_id=p.entry,
                            origin_entry=entry, source=source, created_at=when) for p in postings]
    if sum(line.amount_micros for line in lines) != 0:  # split.py guarantees it; never write an unbalanced transaction
        raise AssertionError(f"transaction {txn} does not balance")
    session.add_all(lines)
    return txn


@dataclass(frozen=True)
class Reconciliation:
    period: str
    revenue: int  # debited from customers
    payouts: int  # credited to payees
    fee: int
    transactions: int
    unbalanced: tuple[str, ...]  # transactions whose lines do not sum to zero

    @property
    def exact(self) -> bool:
        return self.revenue == self.payouts + self.fee and not self.unbalanced


def reconcile(session, period: str) -> Reconciliation:
    """Revenue, payouts and fee of the ledger lines whose period starts with `period` (a day or a month)."""
    from sqlalchemy import select

    from moeforge.service.market.schema import LedgerLineRow

    rows = session.execute(select(LedgerLineRow.txn, LedgerLineRow.account, LedgerLineRow.amount_micros)
                           .where(LedgerLineRow.period.startswith(period))).all()
    revenue = payouts = fee = 0
    sums: dict[str, int] = defaultdict(int)
    for txn, account, amount in rows:
        sums[txn] += amount
        if account.startswith(CUSTOMER):
            revenue -= amount
        elif account == FEE_ACCOUNT:
            fee += amount
        else:
            payouts += amount
    return Reconciliation(period, revenue, payouts, fee, len(sums), tuple(sorted(t for t, s in sums.items() if s)))


@dataclass
class Statement:
    """What one payee earned in a period: the total, and per entry and per source (usage report or export)."""

    payee: str
    period: str
    total_micros: int = 0
    lines: list[dict] = field(default_factory=list)


def statements(session, period: str, payee: str | None = None) -> list[Statement]:
    """Payout statements for the period (a day YYYY-MM-DD or a month YYYY-MM), one per payee (or only `payee`)."""
    from sqlalchemy import select

    from moeforge.service.market.schema import LedgerLineRow, UsageLineRow, UsageReportRow

    query = select(LedgerLineRow).where(LedgerLineRow.period.startswith(period), ~LedgerLineRow.account.startswith(CUSTOMER),
                                        LedgerLineRow.account != FEE_ACCOUNT)
    if payee is not None:
        query = query.where(LedgerLineRow.account == payee)
    grouped: dict[str, dict[tuple, int]] = defaultdict(lambda: defaultdict(int))
    for row in session.scalars(query.order_by(LedgerLineRow.id)):
        grouped[row.account][(row.period, row.kind, row.entry_id, row.origin_entry, row.source)] += row.amount_micros
    tokens = {}
    reports = select(UsageReportRow.id).where(UsageReportRow.period.startswith(period))
    for report, entry, routed in session.execute(select(UsageLineRow.report_id, UsageLineRow.entry_id, UsageLineRow.routed_tokens)
                                                 .where(UsageLineRow.report_id.in_(reports))):
        tokens[(report, entry)] = routed
    out = []
    for account in sorted(grouped):
        st = Statement(payee=account, period=period)
        for (day, kind, entry, origin, source), micros in sorted(grouped[account].items()):
            st.total_micros += micros
            st.lines.append({"period": day, "kind": kind, "entry": entry, "via": origin, "source": source, "micros": micros,
                             "routed_tokens": round(tokens.get((source, origin), 0.0), 3) if kind == "usage" else None})
        out.append(st)
    return out


CSV_FIELDS = ("payee", "statement_period", "period", "kind", "entry", "via", "source", "routed_tokens", "micros", "units")


def statements_csv(rows: list[Statement]) -> str:
    from moeforge.service.market.terms import units

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for st in rows:
        for line in st.lines:
            writer.writerow({"payee": st.payee, "statement_period": st.period, **line, "units": units(line["micros"])})
    return buffer.getvalue()
