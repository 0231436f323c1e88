"""What every subcommand's parser shares: its help from the module docstring, --log-level,
--config / --set. Imported by each cli/*.py; imports nothing of theirs."""
from __future__ import annotations

import argparse

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_config_args(p: argparse.ArgumentParser, example: str = "model.weights=random") -> None:
    """--config / --set, the same on every command that reads the config."""
    p.add_argument("--config", "-c", metavar="FILE|NAME",
                   help="YAML profile layered on the shipped defaults: a file, or a shipped profile "
                        "name (cpu, cluster)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config key, e.g. --set {example} (repeatable)")


def command(sub, name: str, module_doc: str, run, **kwargs) -> argparse.ArgumentParser:
    """A subparser whose help is its module's docstring (first line: summary)."""
    summary = module_doc.strip().splitlines()[0]
    p = sub.add_parser(name, help=summary, description=module_doc,
                       formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    p.set_defaults(run=run)
    p.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="logging level (default: INFO for label and audit, WARNING otherwise)")
    return p
