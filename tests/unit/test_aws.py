"""Publishing to AWS against moto_server on loopback, and RegisterImage checked with Stubber.

moto keeps snapshot blocks faithfully (read back with GetSnapshotBlock), tags, copies and
describe-by-tag, but not every RegisterImage field: those are checked with botocore's Stubber,
which also validates the request against the service model.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
from botocore.exceptions import ClientError  # noqa: E402
from botocore.stub import Stubber  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from imagebuilder.commands.aws import publish_cmd, userdata_cmd  # noqa: E402
from imagebuilder.disk.configdrive import env_file  # noqa: E402
from imagebuilder.disk.model import Disk, Extent  # noqa: E402
from imagebuilder.errors import FetchError, NotFoundError, UserError  # noqa: E402
from imagebuilder.layers.base import init_files  # noqa: E402
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Image, Store  # noqa: E402
from imagebuilder.targets.aws import api as awsapi  # noqa: E402
from imagebuilder.targets.aws import ebs as ebsdirect  # noqa: E402
from imagebuilder.targets.aws import publish as aws  # noqa: E402
from support.servers import MOTO_REGION, aws_env, free_port, moto_executable, moto_server  # noqa: E402
from tests.unit.layer_fixture import tiny_layer  # noqa: E402

B = ebsdirect.BLOCK_SIZE
REGION = MOTO_REGION


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    exe = moto_executable()
    if exe is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    with moto_server(exe) as url:
        yield url


@pytest.fixture
def moto(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in aws_env(moto_url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(awsapi, "BACKOFF", 0.01)
    return moto_url


def _disk() -> Disk:
    """6 MiB: data at odd offsets, a block of zeros inside an extent, untouched blocks."""
    return Disk(12 * B + 4096, [
        Extent(100, 1000, os.urandom(1000)),
        Extent(2 * B + 7, B, os.urandom(B)),  # spans blocks 2 and 3
        Extent(5 * B, B, bytes(B)),  # data extent, all zeros: skipped
        Extent(7 * B - 3, 10, b"0123456789"),  # spans blocks 6 and 7
        Extent(12 * B, 4096, os.urandom(4096)),  # the short last block
    ])


DATA_BLOCKS = [0, 2, 3, 6, 7, 12]


def _digests() -> tuple[str, str]:
    return (f"sha256:{hashlib.sha256(uuid.uuid4().bytes).hexdigest()}",
            f"sha256:{hashlib.sha256(uuid.uuid4().bytes).hexdigest()}")


def _publish(disk: Disk, image_digest: str, disk_digest: str, **kw: Any) -> aws.PublishResult:
    kw.setdefault("region", REGION)
    session, progress = kw.pop("session", None), kw.pop("progress", None)
    request = aws.PublishRequest(_image(image_digest, disk_digest), **kw)
    return aws.publish_disk(request, disk, disk_digest, session=session, progress=progress)


def _tags(obj: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in obj.get("Tags", [])}


def test_blocks_read_back_equal_the_disk_and_zero_blocks_are_absent(moto: str) -> None:
    disk = _disk()
    image_digest, disk_digest = _digests()
    result = _publish(disk, image_digest, disk_digest, env="test", workers=3)
    assert result.upload is not None and result.snapshot_id is not None
    assert result.upload.blocks_sent == len(DATA_BLOCKS)
    assert result.upload.blocks_skipped == 1
    ebs = boto3.client("ebs", region_name=REGION)
    listed = ebs.list_snapshot_blocks(SnapshotId=result.snapshot_id)
    blocks = {b["BlockIndex"]: b["BlockToken"] for b in listed["Blocks"]}
    assert sorted(blocks) == DATA_BLOCKS
    padded = disk.read(0, disk.size) + bytes(13 * B - disk.size)
    for index, token in blocks.items():
        got = ebs.get_snapshot_block(SnapshotId=result.snapshot_id, BlockIndex=index,
                                     BlockToken=token)
        data = got["BlockData"].read()
        assert data == padded[index * B:(index + 1) * B]
        assert got["Checksum"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_tags_describe_by_tag_copies_and_idempotent_republish(moto: str) -> None:
    disk = _disk()
    image_digest, disk_digest = _digests()
    first = _publish(disk, image_digest, disk_digest, env="test",
                     regions=["eu-west-1", "us-west-2"])
    ec2 = boto3.client("ec2", region_name=REGION)
    found = ec2.describe_images(Owners=["self"], Filters=[
        {"Name": "tag:imagebuilder:disk-digest", "Values": [disk_digest]}])["Images"]
    assert [i["ImageId"] for i in found] == [first.image_id]
    tags = _tags(found[0])
    assert tags["imagebuilder:name"] == "hello"
    assert tags["imagebuilder:version"] == "1.0.0"
    assert tags["imagebuilder:image-digest"] == image_digest
    assert tags["imagebuilder:env"] == "test"
    assert found[0]["Name"] == f"hello-1.0.0-{image_digest[7:19]}"
    snaps = ec2.describe_snapshots(Filters=[
        {"Name": "tag:imagebuilder:disk-digest", "Values": [disk_digest]}])["Snapshots"]
    assert [s["SnapshotId"] for s in snaps] == [first.snapshot_id]
    assert _tags(snaps[0])["imagebuilder:image-digest"] == image_digest
    assert set(first.copies) == {"eu-west-1", "us-west-2"}
    for region, image_id in first.copies.items():
        other = boto3.client("ec2", region_name=region)
        copy = other.describe_images(Owners=["self"], Filters=[
            {"Name": "tag:imagebuilder:disk-digest", "Values": [disk_digest]}])["Images"]
        assert [i["ImageId"] for i in copy] == [image_id]
        assert _tags(copy[0])["imagebuilder:env"] == "test"

    again = _publish(disk, image_digest, disk_digest, env="test",
                     regions=["eu-west-1", "us-west-2"])
    assert again.reused and again.upload is None
    assert again.image_id == first.image_id and again.copies == first.copies
    assert len(ec2.describe_snapshots(Filters=[
        {"Name": "tag:imagebuilder:disk-digest", "Values": [disk_digest]}])["Snapshots"]) == 1


def _image(image_digest: str, disk_digest: str) -> Image:
    return Image(ref="hello:1.0.0", digest=image_digest, manifest={},
                 config={"disk": {"digest": disk_digest}}, size=0)


def test_promote_retags_without_upload(moto: str) -> None:
    image_digest, disk_digest = _digests()
    first = _publish(_disk(), image_digest, disk_digest, env="test", regions=["eu-west-1"])
    image = _image(image_digest, disk_digest)
    out = aws.promote_aws(image, region=REGION, env="prod", regions=["eu-west-1"])
    assert out["images"] == {REGION: first.image_id, "eu-west-1": first.copies["eu-west-1"]}
    for region, image_id in out["images"].items():
        ec2 = boto3.client("ec2", region_name=region)
        ami = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        assert _tags(ami)["imagebuilder:env"] == "prod"
    snap = boto3.client("ec2", region_name=REGION).describe_snapshots(
        SnapshotIds=[first.snapshot_id])["Snapshots"][0]
    assert _tags(snap)["imagebuilder:env"] == "test"  # moto's AMI names its own snapshot
    with pytest.raises(NotFoundError, match="publish it first"):
        aws.promote_aws(_image(*_digests()), region=REGION, env="prod")


def test_publish_of_a_stored_image_uses_its_disk_digest(
        moto: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import imagebuilder.formats.export as export
    store = Store(tmp_path / "store")
    kernel = store.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE)
    layer = store.add_blob_bytes(tiny_layer(uuid.uuid4().bytes), INITRD_LAYER_MEDIA_TYPE)
    _, disk_digest = _digests()
    store.put_image("hello:2.0", {"name": "hello", "version": "2.0",
                                  "disk": {"digest": disk_digest}}, [kernel, layer])
    image = store.resolve("hello:2.0")
    monkeypatch.setattr(export, "bootable", lambda cache, source, **kw: _disk())
    out = aws.publish(aws.PublishRequest(image, REGION, env="test"), store,
                      None).to_json()  # type: ignore[arg-type]
    assert out["disk_digest"] == disk_digest and out["image_digest"] == image.digest
    assert out["upload"]["blocks_sent"] == len(DATA_BLOCKS) and not out["reused"]


def test_failure_part_way_deletes_the_snapshot(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(awsapi, "RETRY_ATTEMPTS", 3)
    session = boto3.Session(region_name=REGION)
    calls: dict[int, int] = {}

    def fail(params: dict[str, Any], **_: Any) -> None:
        index = params["BlockIndex"]
        calls[index] = calls.get(index, 0) + 1
        if index == 3 or (index == 2 and calls[index] == 1):  # 2: throttled once, then fine
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}},
                              "PutSnapshotBlock")

    session.events.register("provide-client-params.ebs.PutSnapshotBlock", fail)
    image_digest, disk_digest = _digests()
    with pytest.raises(FetchError, match="ThrottlingException"):
        _publish(_disk(), image_digest, disk_digest, session=session, workers=2)
    assert calls[3] == 3 and calls[2] == 2
    ec2 = boto3.client("ec2", region_name=REGION)
    filters = [{"Name": "tag:imagebuilder:disk-digest", "Values": [disk_digest]}]
    assert ec2.describe_snapshots(Filters=filters)["Snapshots"] == []
    assert ec2.describe_images(Owners=["self"], Filters=filters)["Images"] == []


def test_failure_after_register_deregisters_the_image(
        moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    session = boto3.Session(region_name=REGION)

    def fail(params: dict[str, Any], **_: Any) -> None:
        if any(r.startswith("ami-") for r in params["Resources"]):
            raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}},
                              "CreateTags")

    session.events.register("provide-client-params.ec2.CreateTags", fail)
    image_digest, disk_digest = _digests()
    before = {i["ImageId"] for i in boto3.client("ec2", region_name=REGION).describe_images(
        Owners=["self"])["Images"]}
    with pytest.raises(FetchError, match="InternalError"):
        _publish(_disk(), image_digest, disk_digest, session=session)
    ec2 = boto3.client("ec2", region_name=REGION)
    after = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    assert after == before
    assert ec2.describe_snapshots(Filters=[
        {"Name": "tag:imagebuilder:disk-digest", "Values": [disk_digest]}])["Snapshots"] == []


# --- request shapes and errors, without a server ---------------------------------------------


def _stubbed(service: str) -> tuple[Any, Stubber]:
    client = boto3.client(service, region_name=REGION, aws_access_key_id="k",
                          aws_secret_access_key="s")
    return client, Stubber(client)


def test_register_image_asks_for_uefi_preferred_ena_and_imdsv2() -> None:
    ec2, stub = _stubbed("ec2")
    stub.add_response("register_image", {"ImageId": "ami-12345678"}, {
        "Name": "hello-1.0-abc", "Description": "d", "Architecture": "x86_64",
        "RootDeviceName": "/dev/xvda", "VirtualizationType": "hvm", "EnaSupport": True,
        "BootMode": "uefi-preferred", "ImdsSupport": "v2.0",
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {
            "SnapshotId": "snap-1", "VolumeType": "gp3", "DeleteOnTermination": True}}],
    })
    with stub:
        assert aws.register(ec2, "snap-1", "hello-1.0-abc", "d", REGION) == "ami-12345678"
    stub.assert_no_pending_responses()


class _Session:
    def __init__(self, clients: dict[str, Any]) -> None:
        self.clients = clients

    def client(self, service: str, **_: Any) -> Any:
        return self.clients[service]


def test_access_denied_is_a_user_error() -> None:
    ec2, stub = _stubbed("ec2")
    stub.add_client_error("describe_images", "UnauthorizedOperation", "not allowed")
    with stub, pytest.raises(UserError, match="AWS denied DescribeImages in region us-east-1"):
        _publish(_disk(), *_digests(), session=_Session({"ec2": ec2}))


def test_unknown_kms_key_is_a_user_error_and_nothing_is_left() -> None:
    ec2, ec2_stub = _stubbed("ec2")
    ebs, ebs_stub = _stubbed("ebs")
    ec2_stub.add_response("describe_images", {"Images": []})
    ebs_stub.add_client_error("start_snapshot", "ValidationException",
                              "KMS key arn:aws:kms:us-east-1:1:key/nope does not exist")
    with ec2_stub, ebs_stub, pytest.raises(UserError, match="KMS key .*nope cannot be used"):
        _publish(_disk(), *_digests(), session=_Session({"ec2": ec2, "ebs": ebs}),
                 kms_key_id="arn:aws:kms:us-east-1:1:key/nope")
    ec2_stub.assert_no_pending_responses()


def test_encrypted_snapshots_write_every_block() -> None:
    disk = Disk(3 * B, [Extent(B + 1, 1, b"x")])
    assert [i for i, _ in ebsdirect._blocks(disk, 4 * B, encrypted=True)] == [0, 1, 2, 3]
    assert [i for i, _ in ebsdirect._blocks(disk, 4 * B, encrypted=False)] == [1]


def test_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(UserError, match="no AWS credentials found"):
        _publish(_disk(), *_digests())


def test_bad_region_and_unknown_profile() -> None:
    with pytest.raises(UserError, match="not an AWS region name"):
        aws.make_session("moon-1")
    with pytest.raises(UserError, match="--profile"):
        aws.make_session(REGION, profile=f"nope-{uuid.uuid4().hex}")


def test_a_request_checks_its_regions_and_derives_the_ami_name_and_tags() -> None:
    image = _image("sha256:" + "ab" * 32, "sha256:" + "cd" * 32)
    with pytest.raises(UserError, match="'moon' is not an AWS region name"):
        aws.PublishRequest(image, REGION, regions=("eu-west-1", "moon"))
    request = aws.PublishRequest(image, REGION, env="test",
                                 regions=("eu-west-1", REGION, "eu-west-1"))
    assert request.copies == ("eu-west-1",)
    assert request.name == "hello-1.0.0-" + "ab" * 6
    assert {t["Key"]: t["Value"] for t in request.tags("sha256:" + "ef" * 32)} == {
        "imagebuilder:name": "hello", "imagebuilder:version": "1.0.0",
        "imagebuilder:image-digest": image.digest,
        "imagebuilder:disk-digest": "sha256:" + "ef" * 32, "Name": request.name,
        "imagebuilder:env": "test"}


def test_userdata_is_the_env_file() -> None:
    assert aws.userdata("prod", {"DB": "x"}) == env_file("prod", {"DB": "x"}).decode()
    assert "IMAGEBUILDER_ENV=prod\n" in aws.userdata("prod", {})


def test_commands_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    (tmp_path / "imagebuilder.toml").write_text(
        '[image]\nname = "hello"\nversion = "1.0"\n[app]\npath = "app.jar"\n'
        '[env.test]\nvars = { DB = "t" }\n')
    runner = CliRunner()
    cfg = str(tmp_path / "imagebuilder.toml")
    res = runner.invoke(userdata_cmd, ["nothing:1", "--env", "test", "--config", cfg],
                        standalone_mode=False)
    assert isinstance(res.exception, NotFoundError)
    res = runner.invoke(publish_cmd, ["nothing:1", "--target", "aws", "--region", REGION,
                                      "--config", cfg], standalone_mode=False)
    assert isinstance(res.exception, NotFoundError)
    res = runner.invoke(publish_cmd, ["nothing:1", "--target", "aws", "--region", REGION,
                                      "--env", "nope", "--config", cfg], standalone_mode=False)
    assert isinstance(res.exception, NotFoundError) and "known: test" in str(res.exception)
    res = runner.invoke(publish_cmd, ["x:1", "--target", "aws", "--region", REGION,
                                      "--promote-only"], standalone_mode=False)
    assert isinstance(res.exception, UserError) and "--env" in str(res.exception)
    store = Store(tmp_path / "home" / "store")
    kernel = store.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE)
    layer = store.add_blob_bytes(tiny_layer(b"app"), INITRD_LAYER_MEDIA_TYPE)
    store.put_image("hello:1.0", {"name": "hello", "version": "1.0"}, [kernel, layer])
    res = runner.invoke(userdata_cmd, ["hello:1.0", "--env", "test", "--config", cfg])
    assert res.exit_code == 0 and res.output == env_file("test", {"DB": "t"}).decode()


# --- the init's IMDSv2 fallback --------------------------------------------------------------


class _Imds(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    token = "tok-123"
    body = b"IMAGEBUILDER_ENV=prod\nDB=x\n"

    def do_PUT(self) -> None:
        ok = (self.path == "/latest/api/token"
              and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds") == "21600")
        self._answer(200 if ok else 400, self.token.encode() if ok else b"")

    def do_GET(self) -> None:
        ok = (self.path == "/latest/user-data"
              and self.headers.get("X-aws-ec2-metadata-token") == self.token)
        self._answer(200 if ok else 401, self.body if ok else b"")

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _imds_snippet(port: int) -> str:
    """The init's config part with the metadata service at ``port`` on loopback, then its EC2
    step (the network part's static settings left out)."""
    part = init_files()["usr/share/imagebuilder/config.sh"][0].decode()
    return (part.replace("169.254.169.254 80", f"127.0.0.1 {port}")
            + "apply_static_network() { :; }\nec2_user_data\n")


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox")
def test_init_reads_user_data_through_imdsv2(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Imds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        script = _imds_snippet(server.server_address[1]).replace("/run/", f"{tmp_path}/")
        out = subprocess.run(["busybox", "sh", "-c", f'config=""\n{script}\necho "$config"'],
                             capture_output=True, text=True, timeout=20,
                             env={"PATH": os.environ["PATH"]})
        assert out.stdout.strip() == f"{tmp_path}/config.env"
        assert (tmp_path / "config.env").read_bytes() == _Imds.body
        assert (tmp_path / "config.env").stat().st_mode & 0o077 == 0
    finally:
        server.shutdown()
        server.server_close()
    # No metadata service: the init gives up (the timeout bounds how long it may try).
    script = _imds_snippet(free_port()).replace("/run/", f"{tmp_path}/x")
    out = subprocess.run(["busybox", "sh", "-c", f'config=""\n{script}\necho "[$config]"'],
                         capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "[]"


def test_unreachable_unknown_region_is_a_user_error() -> None:
    from botocore.exceptions import EndpointConnectionError
    with (pytest.raises(UserError, match="unknown AWS region 'us-east-17'"),
          awsapi.aws_errors("us-east-17")):
        raise EndpointConnectionError(endpoint_url="https://ec2.us-east-17.amazonaws.com")
    with (pytest.raises(FetchError, match="cannot reach AWS in region us-east-1"),
          awsapi.aws_errors("us-east-1")):
        raise EndpointConnectionError(endpoint_url="https://ec2.us-east-1.amazonaws.com")


# --- copies that fail, and what is left ------------------------------------------------------


def _copied_ids(session: Any) -> list[str]:
    """The AMI ids CopyImage answers in ``session``, in order."""
    ids: list[str] = []
    session.events.register("after-call.ec2.CopyImage",
                            lambda parsed, **_: ids.append(parsed["ImageId"]))
    return ids


def _fail_copy_tags(params: dict[str, Any], **_: Any) -> None:
    if [r[:4] for r in params["Resources"]] == ["ami-"]:  # the copy (the source AMI goes with
        # its snapshot)
        raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, "CreateTags")


def test_a_failed_copy_is_deleted_and_the_published_ami_named(moto: str) -> None:
    session = boto3.Session(region_name=REGION)
    copied = _copied_ids(session)
    session.events.register("provide-client-params.ec2.CreateTags", _fail_copy_tags)
    image_digest, disk_digest = _digests()
    west = boto3.client("ec2", region_name="eu-west-1")
    snapshots_before = len(west.describe_snapshots(OwnerIds=["self"])["Snapshots"])
    with pytest.raises(FetchError) as info:
        _publish(_disk(), image_digest, disk_digest, session=session, regions=["eu-west-1"])
    source = boto3.client("ec2", region_name=REGION).describe_images(Owners=["self"], Filters=[
        {"Name": "tag:imagebuilder:disk-digest", "Values": [disk_digest]}])["Images"]
    assert len(source) == 1 and len(copied) == 1
    message = str(info.value)
    assert "InternalError" in message and "could not delete" not in message
    assert f"kept and a new publish reuses them: {source[0]['ImageId']} in {REGION}" in message
    assert west.describe_images(ImageIds=copied)["Images"] == []  # the copy was deregistered
    assert len(west.describe_snapshots(OwnerIds=["self"])["Snapshots"]) == snapshots_before
    again = _publish(_disk(), image_digest, disk_digest, regions=["eu-west-1"])
    assert again.reused and again.image_id == source[0]["ImageId"] and "eu-west-1" in again.copies


def test_what_a_failed_copy_cannot_delete_is_named_with_its_command(moto: str) -> None:
    session = boto3.Session(region_name=REGION)
    copied = _copied_ids(session)
    session.events.register("provide-client-params.ec2.CreateTags", _fail_copy_tags)

    def deny(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "no"}},
                          "DeregisterImage")

    session.events.register("provide-client-params.ec2.DeregisterImage", deny)
    with pytest.raises(FetchError) as info:
        _publish(_disk(), *_digests(), session=session, regions=["eu-west-1"])
    assert (f"could not delete what it created in eu-west-1; delete it with: aws ec2 "
            f"deregister-image --region eu-west-1 --image-id {copied[0]}") in str(info.value)
    assert "expire" not in str(info.value)
    west = boto3.client("ec2", region_name="eu-west-1")
    assert copied[0] in {i["ImageId"] for i in west.describe_images(Owners=["self"])["Images"]}


def test_what_a_failed_upload_cannot_delete_is_named(moto: str) -> None:
    session = boto3.Session(region_name=REGION)

    def fail(params: dict[str, Any], **_: Any) -> None:
        if any(r.startswith("ami-") for r in params["Resources"]):
            raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}},
                              "CreateTags")

    def deny(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "no"}}, "x")

    session.events.register("provide-client-params.ec2.CreateTags", fail)
    session.events.register("provide-client-params.ec2.DeleteSnapshot", deny)
    with pytest.raises(FetchError) as info:
        _publish(_disk(), *_digests(), session=session)
    message = str(info.value)
    assert "aws ec2 delete-snapshot --region us-east-1 --snapshot-id snap-" in message
    assert "deregister-image" not in message and "expire" not in message


# --- the commands as a person runs them ------------------------------------------------------


def _home_with_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, str]:
    """An IMAGEBUILDER_HOME holding hello:1.0 (a kernel blob and one layer) and an
    imagebuilder.toml with environments test and prod; the config's path."""
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    cfg = tmp_path / "imagebuilder.toml"
    cfg.write_text('[image]\nname = "hello"\nversion = "1.0"\n[app]\npath = "app.jar"\n'
                   '[env.test]\nvars = { DB = "t" }\n[env.prod]\nvars = { DB = "p" }\n')
    store = Store(tmp_path / "home" / "store")
    kernel = store.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE)
    layer = store.add_blob_bytes(tiny_layer(uuid.uuid4().bytes), INITRD_LAYER_MEDIA_TYPE)
    store.put_image("hello:1.0", {"name": "hello", "version": "1.0"}, [kernel, layer])
    return store, str(cfg)


def _main(*argv: str) -> int:
    from imagebuilder.cli import main
    return main(list(argv))


def test_publish_in_human_mode_shows_progress_and_prints_the_ami(
        moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    store, cfg = _home_with_image(tmp_path, monkeypatch)
    assert _main("publish", "hello:1.0", "--target", "aws", "--region", REGION, "--env", "test",
                 "--regions", "eu-west-1", "--config", cfg) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("published hello:1.0 as ami-") and lines[0].endswith(
        f" in {REGION} for test")
    assert lines[1].startswith("sent ") and " zero blocks" in lines[1]
    assert lines[2].startswith("copied to eu-west-1: ami-")
    assert "ERROR" not in err  # its bar draws on a terminal only: tests/e2e/test_commands.py
    assert _main("publish", "hello:1.0", "--target", "aws", "--region", REGION) == 0
    assert capsys.readouterr().out.startswith("reused hello:1.0 as ami-")
    ami = lines[0].split()[3]
    assert _main("publish", "hello:1.0", "--target", "aws", "--region", REGION, "--json") == 0
    assert json.loads(capsys.readouterr().out)["image_id"] == ami
    assert store.resolve("hello:1.0")


def test_promote_target_aws_retags_the_ami_and_moves_the_local_tag(
        moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from imagebuilder.registry.promote import history
    store, cfg = _home_with_image(tmp_path, monkeypatch)
    image = store.resolve("hello:1.0")
    aws_args = ["--target", "aws", "--region", REGION, "--config", cfg]
    # Never published: NotFoundError, and the local tag does not move.
    assert _main("promote", "hello:1.0", "--env", "test", *aws_args) == 2
    assert "has no AMI in region us-east-1: publish it first" in capsys.readouterr().err
    assert store.tags("hello") == {}
    assert _main("publish", "hello:1.0", "--target", "aws", "--region", REGION, "--regions",
                 "eu-west-1", "--json") == 0
    published = json.loads(capsys.readouterr().out)
    # The promotion order is a gate for AWS too: prod before test is refused, nothing moves.
    assert _main("promote", "hello:1.0", "--env", "prod", *aws_args) == 2
    assert "has not been promoted to 'test'" in capsys.readouterr().err
    for env in ("test", "prod"):
        assert _main("promote", "hello:1.0", "--env", env, *aws_args,
                     "--regions", "eu-west-1") == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith(f"promoted hello:1.0 ({image.digest[:19]}) to {env}: locally "
                               f"and {published['image_id']} in {REGION} and ")
        for region, ami in ((REGION, published["image_id"]),
                            ("eu-west-1", published["copies"]["eu-west-1"])):
            got = boto3.client("ec2", region_name=region).describe_images(ImageIds=[ami])
            assert _tags(got["Images"][0])["imagebuilder:env"] == env
    assert store.tags("hello") == {"test": image.digest, "prod": image.digest}
    assert [r.amis for r in history(store, "hello")] == [
        {REGION: published["image_id"], "eu-west-1": published["copies"]["eu-west-1"]}] * 2
    assert _main("promote", "hello:1.0", "--env", "prod", *aws_args, "--json") == 0
    assert json.loads(capsys.readouterr().out)["amis"] == {REGION: published["image_id"]}


def test_promote_target_aws_user_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, cfg = _home_with_image(tmp_path, monkeypatch)
    cases = [
        (["--target", "aws"], "ERROR: --target aws needs --region: the region REF was "
                              "published to"),
        (["--region", REGION], "ERROR: --region, --regions and --profile go with --target aws"),
        (["--target", "aws", "--region", "moon"], "ERROR: 'moon' is not an AWS region name: "
                                                   "use one like us-east-1"),
        (["--target", "aws", "--region", REGION, "--regions", "x"],
         "ERROR: 'x' is not an AWS region name: use one like us-east-1"),
    ]
    for args, expected in cases:
        assert _main("promote", "hello:1.0", "--env", "test", "--config", cfg, *args) == 2
        assert capsys.readouterr().err.strip() == expected
    assert _main("publish", "hello:1.0", "--target", "aws", "--region", REGION, "--env",
                 "prod", "--promote-only") == 2
    assert capsys.readouterr().err.strip() == (
        "ERROR: --promote-only is now a command of its own: imagebuilder promote hello:1.0 "
        f"--env prod --target aws --region {REGION}")


def test_a_completed_orphan_snapshot_is_registered_not_uploaded_again(moto: str) -> None:
    """A publish killed between CompleteSnapshot and RegisterImage leaves a whole snapshot:
    the next publish registers it (uploading nothing); a pending one is never used."""
    disk = _disk()
    image_digest, disk_digest = _digests()
    request = aws.PublishRequest(_image(image_digest, disk_digest), REGION)
    tags = request.tags(disk_digest)
    ebs = boto3.client("ebs", region_name=REGION)
    ec2 = boto3.client("ec2", region_name=REGION)
    pending = ebs.start_snapshot(VolumeSize=1, Tags=tags)["SnapshotId"]  # killed mid-upload
    orphan = ebsdirect.upload_snapshot(ebs, disk, request, tags=tags)
    unmarked = ebsdirect.upload_snapshot(ebs, disk, request, tags=tags)
    ec2.create_tags(Resources=[orphan.snapshot_id], Tags=[aws.COMPLETE_TAG])
    result = _publish(disk, image_digest, disk_digest)
    assert result.resumed and result.upload is None and not result.reused
    assert result.snapshot_id == orphan.snapshot_id  # not pending, nor unmarked
    assert pending != orphan.snapshot_id != unmarked.snapshot_id
    ami = ec2.describe_images(ImageIds=[result.image_id])["Images"][0]
    assert _tags(ami)["imagebuilder:disk-digest"] == disk_digest
    again = _publish(disk, image_digest, disk_digest)
    assert again.reused and again.image_id == result.image_id
