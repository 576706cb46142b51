"""The registry commands: push, pull and promote (locally, in a registry, on AWS).

Thin like cli.py: parse, call :mod:`imagebuilder.registry.transfer`,
:mod:`imagebuilder.registry.promote` (:mod:`imagebuilder.targets.aws.publish` for ``promote
--target aws``) or the store, print. Errors are raised as ImageBuilderError and turned into one
line and an exit code by ``imagebuilder.cli.main``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from . import env_config, gated, gated_image, get_home, require_signed
from . import human_size as _human
from .options import env_options, json_option
from .render import emit_json, phases

if TYPE_CHECKING:
    from ..store.layout import Store


@contextmanager
def _progress(desc: str) -> Iterator[Callable[[int, int], Callable[[int], None]]]:
    """What push and pull call at each batch of blobs: a bar of ``total`` bytes."""
    with phases() as bars:
        yield lambda total, count: bars.start(total, f"{desc} {count} blob{'s' * (count != 1)}")


def _client(host: str, insecure: bool) -> Any:
    from ..registry.transfer import Client
    return Client(host, insecure=insecure)


_insecure = click.option("--insecure", is_flag=True,
                         help="Plain HTTP, without TLS (only for a registry on loopback).")


@click.command("push")
@click.argument("ref")
@click.argument("target", metavar="HOST[:PORT]/REPO[:TAG]")
@click.option("--force", is_flag=True, help="Move TAG even if it names another image.")
@click.option("--chunk-size", type=click.IntRange(1, 1 << 14), default=64, show_default=True,
              metavar="MiB", help="Upload blobs larger than this in chunks of this size.")
@_insecure
@json_option()
def push_cmd(ref: str, target: str, force: bool, chunk_size: int, insecure: bool,
             as_json: bool) -> None:
    """Push image REF to a registry (TAG defaults to the image's version). Only the blobs the
    registry lacks are uploaded; the manifest goes last."""
    from ..registry import transfer as registry
    dest = registry.RegistryRef.parse(target)
    home = get_home()
    image = home.store.resolve(ref)
    client = _client(dest.host, insecure)
    locations = registry.BlobLocations(home.root / "cache" / "registry" / "blobs.json")
    with _progress(f"push {image.ref}") as progress:
        result = registry.push(home.store, image, dest, client, force=force,
                               chunk_size=chunk_size << 20, locations=locations,
                               progress=progress)
    from ..signing.signatures import push_signatures  # the image's signatures to its .sig tag
    signatures = push_signatures(home.store, image.digest, dest, client)
    from ..signing.dsse import push_attestations  # and its attestations to its .att tag
    attestations = push_attestations(home.store, image.digest, dest, client)
    if as_json:
        emit_json({**result.to_json(), "signatures_sent": signatures,
                   "attestations_sent": attestations})
        return
    click.echo(f"pushed {result.ref} to {result.target} ({result.digest})"
               + (f" with {signatures} new signature(s)" if signatures else "")
               + (f" and {attestations} new attestation(s)" if attestations else ""))
    click.echo(f"sent {len(result.blobs_sent)} blobs ({_human(result.bytes_sent)}), mounted "
               f"{len(result.blobs_mounted)}, skipped {len(result.blobs_skipped)} already there")


@click.command("pull")
@click.argument("source", metavar="HOST[:PORT]/REPO[:TAG|@DIGEST]")
@click.option("--as", "local_ref", metavar="NAME:VERSION",
              help="Store it under this reference (default: the image's own name:version).")
@click.option("--force", is_flag=True, help="Replace a local image of the same reference.")
@_insecure
@json_option()
def pull_cmd(source: str, local_ref: str | None, force: bool, insecure: bool,
             as_json: bool) -> None:
    """Pull an image from a registry into the local store, verifying every blob's digest
    before it enters the store."""
    from ..registry import transfer as registry
    src = registry.RegistryRef.parse(source)
    if src.tag is None and src.digest is None:
        from ..errors import UserError
        raise UserError(f"'{source}' names no tag or digest: add :TAG or @sha256:...")
    home = get_home()
    client = _client(src.host, insecure)
    with _progress(f"pull {src}") as progress:
        result = registry.pull(home.store, src, client, force=force, local_ref=local_ref,
                               progress=progress)
    from ..signing.signatures import pull_signatures  # the .sig tag's, kept with the image
    pull_signatures(home.store, result.digest, src, client)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"pulled {result.target} as {result.ref} ({result.digest})")
    click.echo(f"received {len(result.blobs_received)} blobs "
               f"({_human(result.bytes_received)}), {len(result.blobs_skipped)} already here")


@click.command("promote")
@click.argument("ref")
@click.option("--registry", "registry_repo", metavar="HOST[:PORT]/REPO",
              help="Also move the environment's tag in this registry repository.")
@click.option("--force", is_flag=True,
              help="Promote even if REF was never in the environment before ENV.")
@click.option("--target", "target_name", type=click.Choice(["aws"]),
              help="Also retag REF's published AMI for ENV (aws: in --region and --regions).")
@click.option("--region", help="With --target aws: the region of the AMI, e.g. eu-west-1.")
@click.option("--regions", metavar="R2,R3", help="With --target aws: these regions too.")
@click.option("--profile", help="With --target aws: the AWS profile (default: the usual chain).")
@env_options("The environment to promote REF to.", required=True)
@_insecure
@json_option()
def promote_cmd(ref: str, env_name: str, registry_repo: str | None, force: bool,
                target_name: str | None, region: str | None, regions: str | None,
                profile: str | None, config_path: str | None, insecure: bool,
                as_json: bool) -> None:
    """Point environment ENV's tag at exactly the image REF (a reference or a digest; with
    --registry also a tag or digest in that repository). With --target aws, REF's AMI (see
    publish) is retagged for ENV too. No blob is uploaded and nothing is rebuilt; the
    promotion is recorded in the image's history, so a rollback is a promote of the previous
    digest."""
    from ..registry import promote
    from ..registry import transfer as registry
    cfg = env_config(config_path)
    cfg.env(env_name)  # a one-line error naming the known environments
    client = target = None
    if registry_repo is not None:
        target = registry.RegistryRef.parse(registry_repo)
        if target.tag or target.digest:
            from ..errors import UserError
            raise UserError(f"--registry takes HOST/REPO without a tag: '{registry_repo}'")
        client = _client(target.host, insecure)
    verified = require_signed(ref, env_name, config_path, client=client, target=target)
    store = get_home().store
    image = gated(ref, verified)  # exactly the manifest the gate verified, not REF again
    if verified is not None and target is None:
        gated_image(store, ref, verified)  # still there, or one line saying it changed
    elsewhere = _aws_promotion(store, image, env_name, target_name, region, regions, profile)
    result = promote.promote(store, image, env_name, cfg.env_names, force=force,
                             client=client, target=target, config_path=cfg.path,
                             elsewhere=elsewhere)
    if as_json:
        emit_json(result.to_json())
        return
    where = f" and {result.registry}" if result.registry else ""
    where += "".join(f" and {ami} in {r}" for r, ami in (result.amis or {}).items())
    locally = "locally" if result.local else "(not in the local store)"
    before = f" (was {result.previous[:19]})" if result.previous else ""
    click.echo(f"promoted {result.ref} ({result.digest[:19]}) to {result.environment}: "
               f"{locally}{where}{before}")


def _aws_promotion(store: Store, ref: str, env_name: str, target_name: str | None,
                   region: str | None, regions: str | None,
                   profile: str | None) -> Callable[[str], dict[str, str]] | None:
    """With --target aws: what retags REF's AMIs once the promotion gate has passed."""
    from ..errors import UserError
    if target_name is None:
        if region or regions or profile:
            raise UserError("--region, --regions and --profile go with --target aws")
        return None
    if not region:
        raise UserError("--target aws needs --region: the region REF was published to")
    from ..targets.aws import publish as aws
    image = store.resolve(ref)
    others = tuple(r.strip() for r in (regions or "").split(",") if r.strip())
    session = aws.make_session(region, profile)  # a bad region or profile fails before the gate
    return lambda _digest: dict(aws.promote_aws(image, region=region, env=env_name,
                                                regions=others, session=session)["images"])


COMMANDS: list[click.Command] = [push_cmd, pull_cmd, promote_cmd]

