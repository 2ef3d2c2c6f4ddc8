"""``dsprep train``, ``evaluate`` and ``sweep-lr``: Keras 3 training over dsprep data."""

from __future__ import annotations

import click


@click.command()
@click.argument("data", type=click.Path(exists=True))
@click.argument("run", type=click.Path())
def train(data: str, run: str) -> None:
    """Train a network on DATA, writing everything into RUN."""
    raise click.ClickException("train is not available yet")


@click.command()
@click.argument("run", type=click.Path(exists=True))
@click.argument("data", type=click.Path(exists=True))
def evaluate(run: str, data: str) -> None:
    """Evaluate the best model of RUN on DATA."""
    raise click.ClickException("evaluate is not available yet")


@click.command("sweep-lr")
@click.argument("data", type=click.Path(exists=True))
@click.argument("run", type=click.Path())
def sweep_lr(data: str, run: str) -> None:
    """Train briefly at several learning rates and plot the loss curves."""
    raise click.ClickException("sweep-lr is not available yet")
