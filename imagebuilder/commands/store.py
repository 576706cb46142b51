"""The store command ``check``: parse, call :mod:`imagebuilder.store.check`, print."""

from __future__ import annotations

import json
import sys

import click

from ..errors import DamagedError
from . import get_home
from . import human_size as _human


@click.command("check")
@click.option("--no-cache", is_flag=True, help="Check the image store only, not the stage cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def check_cmd(no_cache: bool, as_json: bool) -> None:
    """Verify the local image store: every blob against its digest, every manifest's config and
    layers, and the stage cache's entries. Says what is damaged and how to repair it; exits 1
    if anything is."""
    from tqdm import tqdm

    from ..store.check import check

    home = get_home()
    with tqdm(desc="check", unit="B", unit_scale=True, unit_divisor=1024, leave=False,
              disable=True if as_json else None) as bar:
        report = check(home.store, None if no_cache else home.cache, progress=bar.update)
    if as_json:
        click.echo(json.dumps(report.to_json()))
        if not report.ok:
            sys.exit(1)
        return
    click.echo(f"checked {report.blobs} blobs ({_human(report.blob_bytes)}), "
               f"{report.entries} index entries, {report.cache_entries} cache entries")
    for p in report.problems:
        click.echo(f"DAMAGED {p.kind} {p.name[:19]}: {p.problem} ({p.path})")
        if p.repair:
            click.echo(f"  repair: {p.repair}")
    if report.scratch:
        click.echo(f"{report.scratch} scratch files of interrupted commands (not damage: "
                   "'imagebuilder gc' removes them)")
    if not report.ok:
        n = len(report.problems)
        raise DamagedError(f"the store is damaged ({n} problem{'s' * (n != 1)}, listed above)")
    click.echo("no damage found")


COMMANDS = [check_cmd]
