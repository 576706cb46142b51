"""Publish an image to AWS as an AMI, uploaded through the EBS direct APIs.

The raw bootable disk goes straight into a new EBS snapshot (:mod:`.ebs`: only the blocks that
hold data, no S3 bucket, no import task). The snapshot becomes an AMI (hvm, x86_64, ENA, root
/dev/xvda, boot mode uefi-preferred, IMDSv2 required), tagged with the image's name, version,
digests and environment, and is copied to the other regions asked for.

Publishing is idempotent: an AMI tagged with the same disk digest in the account and region is
reused (and retagged for the environment). A publish that fails part-way deletes what it created
(the snapshot, the AMI, a copy in another region and its snapshot) and names, with the command
that deletes it, anything it could not delete: a registered AMI or a completed snapshot never
expires. Complete AMIs published before a later region's copy failed are kept (the error names
them) and reused by the next publish. An AMI is registered only once its snapshot is complete;
a publish killed after completing its snapshot but before registering the AMI leaves a whole
snapshot, which the next publish registers instead of uploading the disk again.
:func:`promote_aws` (``imagebuilder promote --target aws``) moves an existing AMI to another
environment by retagging it, uploading nothing. What to publish, where and how is one
:class:`~.request.PublishRequest`; sessions, clients and errors come from :mod:`.api`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ...config.envlimits import USERDATA_MAX
from ...disk.configdrive import env_file
from ...disk.model import Disk
from ...errors import ConfigError, FetchError, ImageBuilderError, NotFoundError, UserError
from .api import REGION_RE, aws_errors, client, make_session
from .ebs import UploadStats, upload_snapshot
from .request import TAG, PublishRequest, ami_name

if TYPE_CHECKING:
    from ...store.cache import Cache
    from ...store.layout import Image, Store

__all__ = ["TAG", "PublishRequest", "PublishResult", "ami_name", "make_session", "promote_aws",
           "publish", "publish_disk", "userdata"]

COMPLETE_TAG = {"Key": f"{TAG}upload", "Value": "complete"}
"""Set on a snapshot once its upload is complete and verified by EBS."""
SNAPSHOT_WAIT = 1800.0
"""Seconds to wait for a completed snapshot to become usable."""
POLL_INTERVAL = 2.0


@dataclass
class PublishResult:
    """The AMI of an image in each region, and how it came to be."""

    name: str
    version: str
    image_digest: str
    disk_digest: str
    region: str
    image_id: str
    snapshot_id: str | None
    env: str | None
    reused: bool
    copies: dict[str, str] = field(default_factory=dict)
    resumed: bool = False
    """Registered from the completed snapshot of an interrupted publish, uploading nothing."""
    upload: UploadStats | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def userdata(env_name: str, vars: Mapping[str, str]) -> str:
    """The EC2 user-data of an instance in ``env_name``: the env file the init reads (through
    IMDSv2) when the instance has no config drive. EC2 takes at most
    :data:`~imagebuilder.config.envlimits.USERDATA_MAX` bytes of it: a larger one is a
    ConfigError."""
    data = env_file(env_name, vars)
    if len(data) > USERDATA_MAX:
        raise ConfigError(f"env.{env_name}.vars: the user-data would be {len(data)} bytes; EC2"
                          f" accepts at most {USERDATA_MAX}: shorten the variables")
    return data.decode()


# --- the snapshot ---------------------------------------------------------------------------


def _wait_snapshot(ec2: Any, snapshot_id: str, region: str) -> None:
    deadline = time.monotonic() + SNAPSHOT_WAIT
    while True:
        with aws_errors(region):
            snaps = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        state = snaps[0]["State"] if snaps else "missing"
        if state == "completed":
            return
        if state in ("error", "missing"):
            raise FetchError(f"snapshot {snapshot_id} in region {region} is in state {state}: "
                             "its upload was not accepted; publish again")
        if time.monotonic() > deadline:
            raise FetchError(f"snapshot {snapshot_id} in region {region} did not complete in "
                             f"{SNAPSHOT_WAIT:.0f} s")
        time.sleep(POLL_INTERVAL)


# --- publish and promote ---------------------------------------------------------------------


def find_ami(ec2: Any, region: str, key: str, value: str) -> dict[str, Any] | None:
    """The newest usable AMI of this account in ``region`` whose tag ``imagebuilder:KEY`` is
    ``value``, or None."""
    with aws_errors(region):
        images = ec2.describe_images(Owners=["self"], Filters=[
            {"Name": f"tag:{TAG}{key}", "Values": [value]},
            {"Name": "state", "Values": ["available", "pending"]},
        ])["Images"]
    images.sort(key=lambda i: str(i.get("CreationDate", "")), reverse=True)
    return images[0] if images else None


def _snapshots_of(ami: Mapping[str, Any]) -> list[str]:
    return [str(m["Ebs"]["SnapshotId"]) for m in ami.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")]


def _retag(ec2: Any, region: str, ids: Sequence[str], env: str) -> None:
    with aws_errors(region):
        ec2.create_tags(Resources=list(ids), Tags=[{"Key": f"{TAG}env", "Value": env}])


def register(ec2: Any, snapshot_id: str, name: str, description: str, region: str) -> str:
    """Register the AMI booting from ``snapshot_id`` (the disk boots BIOS and UEFI)."""
    with aws_errors(region):
        return str(ec2.register_image(
            Name=name, Description=description, Architecture="x86_64",
            RootDeviceName="/dev/xvda", VirtualizationType="hvm", EnaSupport=True,
            BootMode="uefi-preferred", ImdsSupport="v2.0",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {
                "SnapshotId": snapshot_id, "VolumeType": "gp3", "DeleteOnTermination": True}}],
        )["ImageId"])


def publish(request: PublishRequest, store: Store, cache: Cache, *, session: Any = None,
            progress: Callable[[int], None] | None = None) -> PublishResult:
    """Publish the stored ``request.image`` as its request asks; see the module docstring."""
    from ...disk.boot import BootSource
    from ...formats.export import bootable, disk_digest
    session = session or make_session(request.region, request.profile)
    disk = bootable(cache, BootSource.of_image(store, request.image))
    digest = request.recorded_disk_digest or disk_digest(disk)
    return publish_disk(request, disk, digest, session=session, progress=progress)


def publish_disk(request: PublishRequest, disk: Disk, disk_digest: str, *, session: Any = None,
                 progress: Callable[[int], None] | None = None) -> PublishResult:
    """Publish ``disk`` (whose raw bytes hash to ``disk_digest``) as an AMI in the request's
    region (reusing one with the same disk digest) and copy it to its other regions."""
    session = session or make_session(request.region, request.profile)
    region, env = request.region, request.env
    ec2 = client(session, "ec2", region)
    image = request.image
    result = PublishResult(name=image.name, version=image.version, image_digest=image.digest,
                           disk_digest=disk_digest, region=region, image_id="",
                           snapshot_id=None, env=env, reused=False)
    existing = find_ami(ec2, region, "disk-digest", disk_digest)
    if existing is not None:
        result.image_id = str(existing["ImageId"])
        snaps = _snapshots_of(existing)
        result.snapshot_id = snaps[0] if snaps else None
        result.reused = True
        if env:
            _retag(ec2, region, [result.image_id, *snaps], env)
    else:
        _create(session, ec2, disk, request, result, progress)
    for other in request.copies:
        try:
            result.copies[other] = _copy(session, request, result, other)
        except ImageBuilderError as e:
            kept = ", ".join([f"{result.image_id} in {region}",
                              *(f"{i} in {r}" for r, i in result.copies.items())])
            raise type(e)(f"{e}; the AMIs published so far are kept and a new publish reuses "
                          f"them: {kept}") from None
    return result


def _create(session: Any, ec2: Any, disk: Disk, request: PublishRequest, result: PublishResult,
            progress: Callable[[int], None] | None) -> None:
    """Upload ``disk`` to a snapshot (or take the completed one of an interrupted publish),
    register the AMI and tag both; on failure, delete what was made."""
    region = result.region
    tags = request.tags(result.disk_digest)
    snapshot_id: str | None = None
    image_id: str | None = None
    orphan = None if request.kms_key_id else _orphan_snapshot(ec2, region, result.disk_digest)
    try:
        if orphan is not None:  # an interrupted publish completed it: whole, verified by EBS
            result.snapshot_id, result.resumed = orphan, True
        else:
            ebs = client(session, "ebs", region, workers=request.workers, retries=1)
            stats = upload_snapshot(ebs, disk, request, tags=tags, progress=progress)
            snapshot_id = result.snapshot_id = stats.snapshot_id
            result.upload = stats
            _wait_snapshot(ec2, snapshot_id, region)
            with aws_errors(region):  # the mark an orphan needs to be trusted (see below)
                ec2.create_tags(Resources=[snapshot_id], Tags=[COMPLETE_TAG])
        assert result.snapshot_id is not None
        image_id = register(ec2, result.snapshot_id, request.name, request.description, region)
        with aws_errors(region):
            ec2.create_tags(Resources=[image_id, result.snapshot_id], Tags=tags)
        result.image_id = image_id
    except BaseException as e:
        snapshot_id = snapshot_id or getattr(e, "snapshot_id", None)
        _raise_with_leftovers(e, _cleanup(ec2, region, image_id, [snapshot_id]), region)
        raise


def _orphan_snapshot(ec2: Any, region: str, disk_digest: str) -> str | None:
    """A completed, unencrypted snapshot of this disk that no AMI uses: what a publish killed
    between completing its snapshot and registering the AMI leaves. Only a snapshot carrying
    :data:`COMPLETE_TAG` counts: that tag is set once CompleteSnapshot succeeded (EBS checked
    every block's checksum and the aggregate) and the snapshot reads as completed, so it holds
    the whole disk and is registered rather than uploaded again. Any other snapshot of an
    interrupted publish is never used."""
    with aws_errors(region):
        snaps = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
            {"Name": f"tag:{TAG}disk-digest", "Values": [disk_digest]},
            {"Name": f"tag:{COMPLETE_TAG['Key']}", "Values": [COMPLETE_TAG["Value"]]}],
        )["Snapshots"]
        snaps = [s for s in snaps if s.get("State") == "completed" and not s.get("Encrypted")]
        if not snaps:
            return None
        used = {sid for ami in ec2.describe_images(Owners=["self"])["Images"]
                for sid in _snapshots_of(ami)}
    for snap in sorted(snaps, key=lambda s: str(s.get("StartTime", "")), reverse=True):
        if snap["SnapshotId"] not in used:
            return str(snap["SnapshotId"])
    return None


def _cleanup(ec2: Any, region: str, image_id: str | None,
             snapshot_ids: Sequence[str | None]) -> list[str]:
    """Deregister and delete what a failed publish created; the commands that delete what
    could not be deleted (a registered AMI or a completed snapshot stays, and costs, until
    someone deletes it)."""
    left = []
    if image_id:
        try:
            ec2.deregister_image(ImageId=image_id)
        except Exception:
            left.append(f"aws ec2 deregister-image --region {region} --image-id {image_id}")
    for snapshot_id in filter(None, snapshot_ids):
        try:
            ec2.delete_snapshot(SnapshotId=snapshot_id)
        except Exception:
            left.append(f"aws ec2 delete-snapshot --region {region} --snapshot-id {snapshot_id}")
    return left


def _raise_with_leftovers(e: BaseException, left: list[str], region: str) -> None:
    """Re-raise ``e`` naming what a failed publish could not delete in ``region``."""
    if not left:
        return
    note = f"could not delete what it created in {region}; delete it with: {'; '.join(left)}"
    if isinstance(e, ImageBuilderError):
        raise type(e)(f"{e} ({note})") from None
    e.add_note(note)


def _copy(session: Any, request: PublishRequest, result: PublishResult, region: str) -> str:
    """The AMI's copy in ``region`` (reused when one with the disk digest exists), tagged."""
    ec2 = client(session, "ec2", region)
    existing = find_ami(ec2, region, "disk-digest", result.disk_digest)
    if existing is not None:
        image_id = str(existing["ImageId"])
        if request.env:
            _retag(ec2, region, [image_id, *_snapshots_of(existing)], request.env)
        return image_id
    params: dict[str, Any] = {"SourceImageId": result.image_id, "SourceRegion": result.region,
                              "Name": request.name, "Description": request.description,
                              "ClientToken": f"{result.disk_digest[7:39]}-{region}"}
    if request.kms_key_id:
        params["Encrypted"] = True  # with the region's default EBS key
    with aws_errors(region):
        image_id = str(ec2.copy_image(**params)["ImageId"])
    try:
        with aws_errors(region):
            ec2.create_tags(Resources=[image_id], Tags=request.tags(result.disk_digest))
    except BaseException as e:
        _raise_with_leftovers(e, _cleanup(ec2, region, image_id, _copy_snapshots(ec2, image_id)),
                              region)
        raise
    return image_id


def _copy_snapshots(ec2: Any, image_id: str) -> list[str | None]:
    """The snapshots of a copied AMI (none yet while the copy is pending), to delete with it."""
    try:
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    except Exception:
        return []
    return [s for ami in images for s in _snapshots_of(ami)]


def _check_regions(regions: Sequence[str]) -> None:
    for other in regions:
        if not REGION_RE.fullmatch(other):
            raise UserError(f"'{other}' is not an AWS region name: use one like us-east-1")


def promote_aws(image: Image, *, region: str, env: str, regions: Sequence[str] = (),
                profile: str | None = None, session: Any = None) -> dict[str, Any]:
    """Tag the published AMI of ``image`` (and its snapshot) for ``env`` in ``region`` and
    ``regions``; uploads nothing. NotFoundError if it was never published there."""
    session = session or make_session(region, profile)
    _check_regions(regions)
    out: dict[str, Any] = {"name": image.name, "version": image.version,
                           "image_digest": image.digest, "env": env, "images": {}}
    for where in dict.fromkeys((region, *regions)):
        ec2 = client(session, "ec2", where)
        ami = find_ami(ec2, where, "image-digest", image.digest)
        if ami is None:
            raise NotFoundError(
                f"{image.ref} ({image.digest[:19]}) has no AMI in region {where}: publish it "
                f"first with 'imagebuilder publish {image.ref} --target aws --region {where}'")
        _retag(ec2, where, [str(ami["ImageId"]), *_snapshots_of(ami)], env)
        out["images"][where] = str(ami["ImageId"])
    return out
