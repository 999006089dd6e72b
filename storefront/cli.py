"""`flask smi …` commands."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from storefront.catalog import seed_demo


@click.group()
def smi() -> None:
    """Sell My Images maintenance commands."""


@smi.command("seed-demo")
@with_appcontext
def seed_demo_command() -> None:
    """Create the demo catalog unless the catalog already has content."""
    added = seed_demo(current_app._get_current_object())  # type: ignore[attr-defined]
    if added:
        click.echo(f"Demo catalog created: {added} images.")
    else:
        click.echo("The catalog already has content; nothing to do.")
