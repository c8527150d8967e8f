"""`moeforge chain …`: run a local chain (init, register, stake, step) and look at any chain.

Admin commands (init, register, stake, step) work on a local chain only; on Bittensor the same moves
are `btcli subnets register` and `btcli stake add`. Wallets are btcli's files, usable by both.
"""

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from moeforge.chain.keys import DEFAULT_WALLET_PATH, check_ss58, create_wallet, load_wallet
from moeforge.chain.open import open_chain
from moeforge.chain.protocol import Chain, Commitment
from moeforge.cli import settings
from moeforge.errors import ChainError, ConfigError

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, help="Run a local chain (init, register, stake, step) and look at any chain.")
wallet_app = typer.Typer(no_args_is_help=True, help="Create btcli-compatible wallets.")
app.add_typer(wallet_app, name="wallet")
console = Console()

_SHOWN_BYTES = 24  # of a commitment, in the metagraph table
_MAX_STEP = 10**9  # blocks one `chain step` may advance; sqlite integers stop at 2**63

ChainOpt = Annotated[
    str | None, typer.Option("--chain", help="Chain URL (default: $MOEFORGE_CHAIN, or the local chain under $MOEFORGE_HOME).")
]
WalletPathOpt = Annotated[Path, typer.Option("--path", help="Wallets folder (btcli's default).")]


@app.command()
def init(
    block_seconds: Annotated[
        float | None, typer.Option(min=0, help="Seconds per block; 0 = manual clock, moved by `step` (new chains only).")
    ] = None,
    chain: ChainOpt = None,
) -> None:
    """Create the local chain (or open it if it exists) and print its settings."""
    options = {} if block_seconds is None else {"block_seconds": block_seconds}
    ledger = _admin(open_chain(_url(chain), **options), "init")
    clock = "manual (moved by `moeforge chain step`)" if ledger.block_seconds == 0 else f"{ledger.block_seconds:g} s per block"
    _say(f"local chain {escape(str(ledger.path))}: netuid {ledger.netuid}, {clock}, block {ledger.block()}, "
         f"{len(ledger.metagraph().neurons)} neurons")


@wallet_app.command("create")
def wallet_create(
    name: Annotated[str, typer.Argument(help="Wallet (coldkey) name.")],
    hotkey: Annotated[str, typer.Option("--hotkey", help="Hotkey name.")] = "default",
    path: WalletPathOpt = DEFAULT_WALLET_PATH,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing hotkey (and coldkey).")] = False,
) -> None:
    """Write wallet NAME with a hotkey as btcli does (unencrypted coldkey: for local and test use)."""
    from moeforge.cli.inputs import output_dir

    for label, value in (("NAME", name), ("--hotkey", hotkey)):
        if not value or value in (".", "..") or "/" in value or "\\" in value:
            raise ConfigError(f"{label} {value!r}: a wallet or hotkey name is one non-empty file name, without '/' "
                              "(commands take a wallet as NAME/HOTKEY).")
    output_dir(Path(path).expanduser(), "--path")
    wallet = create_wallet(name, hotkey, path, overwrite=overwrite)
    _say(f"wallet {name}/{hotkey} in {escape(str(Path(path).expanduser() / name))}")
    _say(f"coldkey {wallet.coldkeypub.ss58_address}")
    _say(f"hotkey  {wallet.hotkey.ss58_address}")


@app.command()
def register(
    target: Annotated[str, typer.Argument(help="A hotkey ss58 address, or a wallet as NAME or NAME/HOTKEY.")],
    coldkey: Annotated[str | None, typer.Option(help="Owner coldkey ss58 (default: the wallet's, or the hotkey).")] = None,
    path: WalletPathOpt = DEFAULT_WALLET_PATH,
    chain: ChainOpt = None,
) -> None:
    """Register a hotkey on the local chain and print its uid."""
    ledger = _admin(open_chain(_url(chain)), "register")
    hotkey, wallet_coldkey = _hotkey_of(target, path)
    uid = ledger.register(hotkey, coldkey or wallet_coldkey)
    _say(f"uid {uid}: {hotkey}")


@app.command()
def stake(
    target: Annotated[str, typer.Argument(help="A hotkey ss58 address, or a wallet as NAME or NAME/HOTKEY.")],
    amount: Annotated[float, typer.Argument(help="Stake to add (> 0).")],
    path: WalletPathOpt = DEFAULT_WALLET_PATH,
    chain: ChainOpt = None,
) -> None:
    """Add stake to a registered hotkey on the local chain."""
    ledger = _admin(open_chain(_url(chain)), "stake")
    hotkey, _ = _hotkey_of(target, path)
    total = ledger.add_stake(hotkey, amount)
    _say(f"stake of {hotkey}: {total:,.2f}")


@app.command()
def step(
    blocks: Annotated[int, typer.Argument(min=1, max=_MAX_STEP, help="Blocks to advance.")] = 1,
    chain: ChainOpt = None,
) -> None:
    """Advance the local chain by BLOCKS and print the new head."""
    head = _admin(open_chain(_url(chain)), "step").step(blocks)
    _say(f"block {head}")


@app.command()
def block(chain: ChainOpt = None) -> None:
    """Print the current block and its hash."""
    opened = open_chain(_url(chain))
    head = opened.block()
    _say(f"block {head} {opened.block_hash(head)}")


@app.command()
def metagraph(chain: ChainOpt = None) -> None:
    """Show uids, hotkeys, stake, validator permits and each hotkey's latest commitment."""
    opened = open_chain(_url(chain))
    graph = opened.metagraph()
    latest = opened.commitments()
    table = Table(title=f"netuid {graph.netuid} at block {graph.block}: {len(graph.neurons)} neurons")
    table.add_column("uid", justify="right", no_wrap=True)
    table.add_column("hotkey / latest commitment", min_width=48)  # the full ss58, so it can be copied
    table.add_column("stake", justify="right", no_wrap=True)
    table.add_column("permit", no_wrap=True)
    for n in graph.neurons:
        shown = _show(latest.get(n.hotkey))
        cell = n.hotkey + (f"\n[dim]{shown}[/dim]" if shown else "")
        table.add_row(str(n.uid), cell, f"{n.stake:,.2f}", "yes" if n.validator_permit else "")
    console.print(table)


@app.command()
def commit(
    wallet: Annotated[str, typer.Argument(help="The committing wallet, as NAME or NAME/HOTKEY.")],
    data: Annotated[str, typer.Argument(help="Up to 128 bytes: text, or hex with --hex.")],
    as_hex: Annotated[bool, typer.Option("--hex", help="DATA is hex.")] = False,
    path: WalletPathOpt = DEFAULT_WALLET_PATH,
    chain: ChainOpt = None,
) -> None:
    """Commit DATA from a wallet's hotkey and print the block it landed in."""
    payload = _hex(data) if as_hex else data.encode()
    keypair = _wallet(wallet, path).hotkey
    landed = open_chain(_url(chain)).commit(keypair, payload)
    _say(f"committed {len(payload)} bytes from {keypair.ss58_address} in block {landed}")


@app.command()
def commitments(
    at_block: Annotated[int | None, typer.Option(min=0, help="Read as of this block (default: the newest).")] = None,
    chain: ChainOpt = None,
) -> None:
    """List each hotkey's latest commitment."""
    rows = open_chain(_url(chain)).commitments(at_block=at_block)
    table = Table(title=f"{len(rows)} commitments" + (f" as of block {at_block}" if at_block is not None else ""))
    table.add_column("hotkey", no_wrap=True, min_width=48)
    table.add_column("block", justify="right")
    table.add_column("data", overflow="fold")
    for c in rows.values():
        table.add_row(c.hotkey, str(c.block), _show(c, limit=None))
    console.print(table)


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def _url(chain: str | None) -> str:
    return chain or settings.chain_url()


def _admin(chain: Chain, command: str):
    """CHAIN if it takes admin moves (a local chain); otherwise ConfigError pointing to btcli."""
    if not hasattr(chain, "step"):
        raise ConfigError(f"`moeforge chain {command}` runs a local chain, and {chain!r} is not one. "
                          "On Bittensor, register and stake with btcli; pass --chain local:///path/chain.sqlite "
                          "for a local chain.")
    return chain


def _hotkey_of(target: str, path: Path) -> tuple[str, str | None]:
    """(hotkey ss58, owner coldkey ss58 or None) for an ss58 address or a wallet NAME[/HOTKEY]."""
    try:
        return check_ss58(target), None
    except ChainError:
        pass
    folder = Path(path).expanduser()
    if not (folder / target.partition("/")[0]).is_dir():
        found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        raise ConfigError(f"{target!r} is neither an ss58 address nor a wallet in {folder} (wallets there: "
                          f"{found or 'none'}). Pass a hotkey address, or create the wallet with "
                          "`moeforge chain wallet create NAME`.")
    wallet = _wallet(target, path)
    return wallet.hotkey.ss58_address, wallet.coldkeypub.ss58_address


def _wallet(spec: str, path: Path):
    name, _, hotkey = spec.partition("/")
    return load_wallet(name, hotkey or "default", path)


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise ConfigError(f"--hex: {text!r} is not hex (expected pairs of 0-9a-f).") from None


def _show(c: Commitment | None, limit: int | None = _SHOWN_BYTES) -> str:
    """A commitment as `@block text` (printable utf-8) or `@block 0x…` (hex), shortened to LIMIT bytes."""
    if c is None:
        return ""
    shown = c.data if limit is None else c.data[:limit]
    more = "…" if limit is not None and len(c.data) > limit else ""
    try:
        text = shown.decode("utf-8")
        body = text if text.isprintable() else "0x" + shown.hex()
    except UnicodeDecodeError:
        body = "0x" + shown.hex()
    return escape(f"@{c.block} {body}{more}")

