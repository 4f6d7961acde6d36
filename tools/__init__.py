"""Command-line tools (console entry point `graphir`)."""
