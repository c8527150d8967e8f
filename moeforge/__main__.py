"""`python -m moeforge` runs the CLI."""

from moeforge.cli.main import main

main()
