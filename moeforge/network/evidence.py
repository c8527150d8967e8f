"""Shard evidence: did a miner train on its *own* assigned shard? (the Templar Gauntlet idea)

A miner trains one pass over the rows `shards.miner_shard` assigned to it this round, and the
delta it submits fits those rows a little better than anyone else's delta does. A delta that was
not trained on them (a replay or extrapolation of a public update, a copy of a leaked delta, noise
shaped to score) has no such advantage. The statistic compares a delta with its **peers** (the
mean of the round's other checked deltas, outside its own copy group; with none, the update the
previous round adopted; with neither, nothing is asked of it) row by row:

    x_r = loss_peer(r) − loss_own(r)  per token, on `evidence_rows` of the miner's own shard rows
    y_c = the same, on `evidence_rows` control rows: train rows in no miner's shard this round,
          drawn with the seed block's hash (unknown before reveals close;
          `validator_round.control_rows`). They are train rows, as likely as the miner's own to
          have been trained in earlier rounds: against held-out rows, never trained, a replay of
          the previous round's update (trained partly on rows that are this round's shards) had
          looked like work on its own shard.

evidence = mean(x) − mean(y), with a one-sided Mann-Whitney U test of x > y (significance.greater_p). Pairing with
the peer on the same rows removes what differs between rows (a plain two-sample test of the
delta's own gains drowns in it); the control rows remove what makes a delta better than its peers
everywhere (a larger step, more data). A copy of someone's delta improves its source's shard, not
the copier's, so in a copy group the member with the strongest evidence is the original
(`checks.find_copies`), whatever the commit order or commitment hash a copier can choose.

Cost: two passes (own delta, peer) over 2 × `evidence_rows` train rows per submission, reported
as the validator's `evidence` phase, apart from Proof-of-Loss scoring.
"""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from moeforge.data.packing import Packed
from moeforge.model.loss import row_losses
from moeforge.model.slices import ExpertSlice, linear_combination
from moeforge.network.scoring import Batch, applied
from moeforge.network.shards import miner_shard
from moeforge.network.significance import greater_p

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evidence:
    statistic: float  # mean own-shard advantage over the peer − mean control advantage, nats per token
    p_value: float  # one-sided Mann-Whitney U test of own > control
    peer: str  # what the delta was compared with
    own_rows: int
    control_rows: int

    def significant(self, level: float) -> bool:
        """Positive and p < level; a level of 1 asks nothing (the evidence is recorded, never required)."""
        return level >= 1 or (self.statistic > 0 and self.p_value < level)

    def describe(self) -> str:
        return (f"own-shard evidence {self.statistic:+.5f} nats/token against {self.peer} "
                f"(p = {self.p_value:.3g}, {self.own_rows} own vs {self.control_rows} control rows)")


def shard_evidence(
    model,
    reference: ExpertSlice,
    deltas: Mapping[str, ExpertSlice],
    groups: Sequence[Sequence[str]],
    train: Packed,
    control: Batch | None,
    *,
    job,
    round: int,
    fallback_peer: ExpertSlice | None = None,
    batch_size: int = 8,
) -> dict[str, Evidence | None]:
    """Evidence per hotkey of `deltas` (None: no peer to compare with, so none is asked).

    `control`: the control rows (input_ids, labels); with none or fewer than two, no delta can show
    significant evidence. `groups` partitions the hotkeys into copy groups; a delta's peers are the
    deltas outside its group. `model` must hold `reference` (the free state) and holds it again on return."""
    n = min(job.evidence_rows, job.shard_rows)
    empty = train.input_ids[:0], train.labels[:0]
    control_ids, control_labels = control if control is not None else empty
    own_rows = {h: miner_shard(train.input_ids.shape[0], job.job_id, round, h, job.shard_rows)[:n] for h in deltas}
    group_of = {h: tuple(g) for g in groups for h in g}
    out: dict[str, Evidence | None] = {}
    for hotkey, delta in deltas.items():
        others = [d for h, d in deltas.items() if h not in group_of.get(hotkey, (hotkey,))]
        if others:
            peer, what = linear_combination(reference, [(1 / len(others), d) for d in others]), f"the mean of {len(others)} peers"
        elif fallback_peer is not None:
            peer, what = fallback_peer, "the previous round's adopted update"
        else:
            out[hotkey] = None
            continue
        index = torch.as_tensor(own_rows[hotkey], dtype=torch.long)
        ids = torch.cat([train.input_ids[index], control_ids])
        labels = torch.cat([train.labels[index], control_labels])
        advantage = _row_losses(model, reference, peer, ids, labels, batch_size) - _row_losses(model, reference, delta, ids, labels, batch_size)
        x, y = advantage[: len(index)], advantage[len(index):]
        x, y = x[torch.isfinite(x)], y[torch.isfinite(y)]
        statistic = float(x.mean() - y.mean()) if x.numel() and y.numel() else 0.0
        out[hotkey] = Evidence(statistic, greater_p(x, y), what, int(x.numel()), int(y.numel()))
        log.debug("%s: %s", hotkey, out[hotkey].describe())
    return out


def _row_losses(model, reference: ExpertSlice, delta: ExpertSlice, ids: torch.Tensor, labels: torch.Tensor,
                batch_size: int) -> torch.Tensor:
    """Per-token loss of each row (NaN for a row with nothing to predict) with reference + delta held.

    Rows straight through `row_losses`: a batch of rows that are all padding is NaNs here, which the caller drops,
    where `batch_losses` (an eval's guard) refuses it."""
    device = next(model.parameters()).device
    with applied(model, reference, delta):
        sums, counts = row_losses(model, ids.to(device), labels.to(device), batch_size)
    return sums / counts.double()
