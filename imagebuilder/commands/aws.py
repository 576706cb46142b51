"""The AWS commands: publish (an AMI per image) and userdata (promotion: ``promote --target
aws`` in commands/registry.py).

Thin like cli.py: parse, call :mod:`imagebuilder.targets.aws.publish`, print. Errors are raised as
ImageBuilderError and turned into one line and an exit code by ``imagebuilder.cli.main``.
"""

from __future__ import annotations

from typing import Any

import click

from . import env_config, gated_image, get_home, require_signed
from .options import env_options, json_option
from .render import emit_json, reporter


def _regions(text: str | None) -> tuple[str, ...]:
    return tuple(r.strip() for r in (text or "").split(",") if r.strip())


@click.command("publish")
@click.argument("ref")
@click.option("--target", type=click.Choice(["aws"]), required=True,
              help="Where to publish (aws: an AMI).")
@click.option("--region", required=True, help="The AWS region of the AMI, e.g. eu-west-1.")
@click.option("--regions", metavar="R2,R3", help="Copy the AMI to these regions too.")
@click.option("--profile", help="The AWS profile (default: the usual credential chain).")
@click.option("--kms-key-id", help="Encrypt the snapshot with this KMS key (id, alias or ARN).")
@click.option("--workers", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Snapshot blocks in flight at once.")
@click.option("--promote-only", is_flag=True, hidden=True)  # replaced by promote --target aws
@env_options("Tag the AMI for this environment (one of imagebuilder.toml's).")
@json_option()
def publish_cmd(ref: str, target: str, region: str, env_name: str | None, regions: str | None,
                profile: str | None, kms_key_id: str | None, workers: int, promote_only: bool,
                config_path: str | None, as_json: bool) -> None:
    """Publish image REF as an AMI in --region (uploaded through the EBS direct APIs, only the
    blocks holding data) and copy it to --regions, tagged with the image's name, version,
    digests and --env. An AMI of the same disk already in the region is reused. To move a
    published AMI to another environment: 'imagebuilder promote REF --env E --target aws
    --region R'."""
    from ..errors import UserError
    from ..targets.aws import publish as aws
    if promote_only:
        raise UserError(f"--promote-only is now a command of its own: imagebuilder promote {ref} "
                        f"--env {env_name or 'ENV'} --target aws --region {region}"
                        + (f" --regions {regions}" if regions else ""))
    if env_name is not None:
        env_config(config_path).env(env_name)  # a one-line error naming the known environments
    verified = require_signed(ref, env_name, config_path)
    home = get_home()
    image = gated_image(home.store, ref, verified)
    other = _regions(regions)
    with reporter().progress(None, f"upload {image.ref}") as advance:
        request = aws.PublishRequest(image, region, env=env_name, regions=other,
                                     profile=profile, kms_key_id=kms_key_id, workers=workers)
        result = aws.publish(request, home.store, home.cache,
                             progress=advance).to_json()
    if as_json:
        emit_json(result)
        return
    how = "reused" if result["reused"] else "published"
    click.echo(f"{how} {image.ref} as {result['image_id']} in {region}"
               + (f" for {env_name}" if env_name else "")
               + (f" (from the completed snapshot {result['snapshot_id']} of an interrupted "
                  "publish)" if result.get("resumed") else ""))
    upload = result.get("upload")
    if upload:
        click.echo(f"sent {upload['blocks_sent']} blocks ({upload['bytes_sent'] >> 20} MiB) in "
                   f"{upload['seconds']:.1f} s, skipped {upload['blocks_skipped']} zero blocks")
    for where, image_id in result["copies"].items():
        click.echo(f"copied to {where}: {image_id}")


@click.command("userdata")
@click.argument("ref")
@env_options("The environment whose variables to use.", required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write it to this file (mode 0600: it holds the variables) instead of stdout.")
@json_option("Print {ref, digest, env, path, userdata} as JSON (userdata: null with -o, "
             "which keeps the variables off the terminal).")
def userdata_cmd(ref: str, env_name: str, output: str | None, config_path: str | None,
                 as_json: bool) -> None:
    """Print the EC2 user-data for REF in environment ENV: the image's init reads it through
    IMDSv2 when the instance has no config drive (put it in the launch template)."""
    from ..targets.aws import publish as aws
    environment = env_config(config_path).env(env_name)
    image = get_home().store.resolve(ref)  # an image that was never built is an error
    data = aws.userdata(env_name, environment.boot_vars())
    if output is not None:
        _write_private(output, data)
    if as_json:
        result: dict[str, Any] = {"ref": image.ref, "digest": image.digest, "env": env_name,
                                  "path": output, "userdata": None if output else data}
        emit_json(result)
    elif output is None:
        click.echo(data, nl=False)


def _write_private(output: str, data: str) -> None:
    from ..errors import UserError
    from ..fsutil import write_private
    try:
        write_private(output, data.encode())
    except OSError as e:
        raise UserError(f"cannot write {output}: {e.strerror}") from None


COMMANDS: list[click.Command] = [publish_cmd, userdata_cmd]
