"""The commands that keep the local store healthy: ``check`` (is anything damaged?) and ``gc``
(delete what nothing uses, and the leftovers of killed commands).

Parse, call :mod:`imagebuilder.store.check`, the store's and the cache's ``gc`` and
:mod:`imagebuilder.scratch`, print. Damage is a :class:`~imagebuilder.errors.DamagedError` (exit 1),
raised after the findings are printed, as JSON too.
"""

from __future__ import annotations

import tempfile

import click

from ..errors import DamagedError
from . import get_home, human_size
from .options import json_option
from .render import emit_json, reporter


@click.command("check")
@click.option("--no-cache", is_flag=True, help="Check the image store only, not the stage cache.")
@json_option("Print the findings as JSON.")
def check_cmd(no_cache: bool, as_json: bool) -> None:
    """Verify the local image store: every blob against its digest, every manifest's config and
    layers, and the stage cache's entries. Says what is damaged and how to repair it; exits 1
    if anything is."""
    from ..store.check import check

    home = get_home()
    with reporter().progress(None, "check") as advance:
        report = check(home.store, None if no_cache else home.cache, progress=advance)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(f"checked {report.blobs} blobs ({human_size(report.blob_bytes)}), "
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
        listed = "in the JSON" if as_json else "listed above"
        raise DamagedError(f"the store is damaged ({n} problem{'s' * (n != 1)}, {listed})")
    if not as_json:
        click.echo("no damage found")


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@json_option()
def gc_cmd(dry_run: bool, as_json: bool) -> None:
    """Delete the blobs of the local store that no image, environment tag or history uses, and
    the scratch files and directories of killed commands (store, cache, temporary directory)."""
    from ..scratch import remove_stale
    home = get_home()
    result = home.store.gc(dry_run=dry_run)
    scratch = [] if dry_run else [*result.scratch, *home.cache.remove_stale(),
                                  *remove_stale(tempfile.gettempdir(), "imagebuilder-")]
    if as_json:
        emit_json({"removed": result.removed, "bytes_freed": result.bytes_freed,
                   "scratch_removed": len(scratch), "dry_run": dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(result.removed)} blobs ({human_size(result.bytes_freed)})"
               + (f" and {len(scratch)} scratch entries of killed commands" if scratch else ""))


COMMANDS: list[click.Command] = [check_cmd, gc_cmd]
