"""Root of the `moeforge` CLI, and the one place that turns errors into exit codes."""

import logging
import os
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

# typer (pinned) carries its own copy of click; its usage errors are these classes, not click's
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from moeforge.errors import MoeforgeError

err_console = Console(stderr=True)


class _Group(typer.core.TyperGroup):
    """One convention for every error: one red line and exit 1. A MoeforgeError prints its message
    (`--debug` shows the traceback); a usage error (unknown option, bad value, missing argument)
    prints click's message and the `--help` to read, instead of a boxed usage block and exit 2."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except MoeforgeError as exc:
            if ctx.meta.get("moeforge.debug"):
                raise
            _fail(str(exc))
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            path = exc.ctx.command_path if exc.ctx else ctx.command_path
            _fail(f"{exc.format_message()} (see `{path} --help`)")


def _fail(message: str):
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


app = typer.Typer(
    name="moeforge",
    cls=_Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Decentralised expert-level fine-tuning of Mixture-of-Experts language models."""
    ctx.meta["moeforge.debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )
    _quiet_hugging_face(verbose)


def _quiet_hugging_face(verbose: bool) -> None:
    """One progress display, ours: Hugging Face's own bars ("Loading weights", "Writing model shards") and its
    advisory warnings are turned off (its warnings come back with --verbose), here and in the roles we start."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ["TRANSFORMERS_VERBOSITY"] = "warning" if verbose else "error"
    if "transformers" in sys.modules:  # imported already: its settings were read at import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity(hf_logging.WARNING if verbose else hf_logging.ERROR)


def _register() -> None:
    from moeforge.cli import bundle, chain, data, demo, export, extract, jobs, library, market, miner, model, network, owner, profile, serve, service, store, testbed, train, validator
    from moeforge.cli import eval as eval_cli

    app.add_typer(testbed.app, name="testbed")
    app.add_typer(model.app, name="model")
    app.add_typer(data.app, name="data")
    app.add_typer(store.app, name="store")
    app.add_typer(chain.app, name="chain")
    app.add_typer(owner.app, name="owner")
    app.add_typer(miner.app, name="miner")
    app.add_typer(validator.app, name="validator")
    app.add_typer(network.app, name="network")
    app.add_typer(library.app, name="library")
    app.add_typer(bundle.app, name="bundle")
    app.add_typer(serve.usage_app, name="usage")
    app.add_typer(serve.keys_app, name="serve-key")
    app.add_typer(service.app, name="service")
    app.add_typer(jobs.app, name="jobs")
    app.add_typer(market.app, name="market")
    app.command("profile")(profile.profile)
    app.command("select")(profile.select)
    app.command("extract")(extract.extract)
    app.command("export")(export.export)
    app.command("serve")(serve.serve)
    app.command("train")(train.train)
    app.command("eval")(eval_cli.eval_cmd)
    app.command("demo")(demo.demo)


_register()


def main() -> None:
    """Entry point of the `moeforge` script."""
    app()
