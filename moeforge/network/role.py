"""What every role (owner, miner, validator) runs with: one `RoleContext` instead of the same seven arguments thrice."""

from dataclasses import dataclass
from pathlib import Path

from moeforge.chain.protocol import Chain
from moeforge.network.faults import Fault
from moeforge.network.observe import Observer
from moeforge.store.protocol import Store


@dataclass(frozen=True)
class RoleContext:
    """The chain and the store a role talks through, its hotkey's keypair, and where and how it runs."""

    chain: Chain
    store: Store
    keypair: object  # a bittensor Keypair (moeforge.chain.keys); signs everything the role publishes
    run_dir: Path | None = None  # state, events and metrics; None keeps nothing (a role that cannot resume)
    metrics_port: int | None = None  # serve Prometheus metrics on this port
    fault: Fault | None = None  # the MOEFORGE_FAULT seam (moeforge.network.faults)
    device: str = "cpu"  # where the role's model runs: auto, cpu, cuda, cuda:N

    @property
    def hotkey(self) -> str:
        return self.keypair.ss58_address

    def observer(self, role: str) -> Observer:
        """The role's events and metrics, in its run folder."""
        return Observer(role, self.hotkey, self.run_dir, metrics_port=self.metrics_port, fault=self.fault)
