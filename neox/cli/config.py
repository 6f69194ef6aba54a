"""`neox config` commands: the pipeline config's JSON Schema and reference page, generated from its types."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neox.cli.app import TOOLS, app

config_app = typer.Typer(help="The pipeline config's JSON Schema and reference docs.", no_args_is_help=True)
app.add_typer(config_app, name="config", rich_help_panel=TOOLS)

OutputOption = Annotated[Path | None, typer.Option(help="Write here (atomically) instead of printing.")]


@config_app.command("schema", short_help="Print the JSON Schema of a pipeline config.")
def schema_command(output: OutputOption = None) -> None:
    """Print the JSON Schema of a pipeline config (for editors: yaml-language-server's `$schema`).

    Example: neox config schema --output pipeline.schema.json
    """
    import json

    from neox.pipeline.config_docs import json_schema

    emit(json.dumps(json_schema(), indent=2) + "\n", output)


@config_app.command("docs", short_help="Print the config reference (docs/configuration.md).")
def docs_command(output: OutputOption = None) -> None:
    """Print the pipeline config reference (docs/configuration.md) generated from the config types.

    Example: neox config docs --output docs/configuration.md
    """
    from neox.pipeline.config_docs import markdown

    emit(markdown(), output)


def emit(text: str, output: Path | None) -> None:
    from neox.pipeline.atomic import atomic_write_text

    if output is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
        typer.echo(f"wrote {output}")
