"""Tables of a finished job: held-out loss before and after, each round's outcome, each miner's share."""

from rich.console import Console
from rich.table import Table


def print_record(record, console: Console, names: dict[str, str] | None = None) -> None:
    """Print a moeforge.network.history.JobRecord; `names` maps hotkeys to readable labels (e.g. miner-0 (subset))."""
    names = names or {}

    def who(hotkey: str) -> str:
        return names.get(hotkey, hotkey[:12] + "…")

    losses = Table(title=f"job {record.job_id}: held-out {record.domain} loss ({record.heldout_tokens:,} tokens the miners never saw)")
    for col in ("expert state", "held-out loss"):
        losses.add_column(col, justify="right" if col != "expert state" else "left")
    losses.add_row("before (base model's experts)", f"{record.heldout_loss_before:.4f}")
    n = len(record.rounds)
    losses.add_row(f"after {n} round{'s' if n != 1 else ''} ({record.accepted_rounds} adopted an update)",
                   f"{record.heldout_loss_after:.4f}")
    console.print(losses)

    rounds = Table(title=f"rounds ({len(record.slots)} experts trained)")
    for col in ("round", "outcome", "accepted", "rejected", "merge-sample loss", "general ppl (drift)", "backed by"):
        rounds.add_column(col)
    for entry in record.rounds:
        rejected = ", ".join(f"{who(h)}: {r.reason}" for h, r in entry.rejections.items() if r.reason != "no_improvement")
        below = sum(r.reason == "no_improvement" for r in entry.rejections.values())
        if below:
            rejected += (", " if rejected else "") + f"{below} without a significant gain"
        loss = ""
        if entry.losses.get("merge_base") is not None and entry.losses.get("adopted") is not None:
            loss = f"{entry.losses['merge_base']:.4f} → {entry.losses['adopted']:.4f}"
        outcome = entry.outcome if entry.choice is None else f"{entry.outcome} ({entry.choice})"
        if entry.outcome == "adopted" and entry.scale != 1.0:
            outcome += f" ×{entry.scale:g}"
        general = "-"
        if (ppl := entry.general_perplexity()) is not None:
            general = f"{ppl[1]:.2f} → {ppl[2]:.2f} ({100 * (ppl[2] / ppl[0] - 1):+.1f}%)"
        backers = ", ".join(f"{who(h)} ({stake:g})" for h, stake in sorted(entry.backers.items(), key=lambda kv: -kv[1]))
        rounds.add_row(str(entry.round), outcome, f"{len(entry.accepted)}/{len(entry.scores)}", rejected or "-", loss, general,
                       backers or "-")
    console.print(rounds)

    shares = Table(title="contribution shares (accepted improvement, summed over the job)")
    shares.add_column("miner")
    shares.add_column("hotkey")
    shares.add_column("share", justify="right")
    for hotkey, share in sorted(record.contributions.items(), key=lambda kv: -kv[1]):
        shares.add_row(names.get(hotkey, "-"), hotkey, f"{100 * share:.1f}%")
    console.print(shares)
