"""`neox cluster` commands: the cluster infra/terraform/aws stands up, as the pipeline config sees it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neox.cli.app import CLUSTER, app
from neox.errors import ConfigError

cluster_app = typer.Typer(help="The cluster infra/terraform/aws stands up, for a config.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster", rich_help_panel=CLUSTER)


@cluster_app.command("config", short_help="A config's cluster part, from Terraform's outputs.")
def cluster_config(
    outputs: Annotated[Path, typer.Argument(help="`terraform output -json` of infra/terraform/aws, saved to a file.")],
    base: Annotated[
        Path | None,
        typer.Option(
            help="A pipeline config to fill in (e.g. configs/pipeline/pile-neox-20b.yaml); "
            "without it only the cluster part is printed."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write the filled-in config here (checked first) instead of printing it.")
    ] = None,
    work_root: Annotated[
        str | None, typer.Option(help="A path every node shares, when the cluster has no FSx.")
    ] = None,
) -> None:
    """Render a pipeline config's cluster part from Terraform's outputs: Ray address, work root on FSx,
    checkpoints on the bucket, one training worker per GPU, the MLflow server's in-VPC address, and the
    NCCL/EFA environment (FI_PROVIDER=efa, ...) for every training worker.

    With --base, the rest of the config is kept, the Pile mirror moves to the cluster's bucket and gradient
    accumulation is set so the global batch stays what the base config says.

    Example: neox cluster config cluster.json --base configs/pipeline/pile-neox-20b.yaml
    --output configs/cluster/pile-neox-20b.yaml
    """
    import yaml

    from neox.pipeline.cluster import cluster_part, filled_in, read_outputs, write_cluster_config

    if base is None:
        if output is not None:
            raise ConfigError("--output writes a whole pipeline config: give --base too")
        typer.echo(yaml.safe_dump(cluster_part(read_outputs(outputs), work_root), sort_keys=False), nl=False)
    elif output is None:
        typer.echo(filled_in(outputs, base, work_root)[0], nl=False)
    else:
        train = write_cluster_config(outputs, base, output, work_root)["train"]
        typer.echo(
            f"wrote {output}: {train['num_workers']} GPU workers, global batch kept with "
            f"gradient_accumulation_steps {train.get('gradient_accumulation_steps', 1)}"
        )
