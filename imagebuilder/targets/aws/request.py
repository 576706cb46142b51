"""One publish to AWS as it was asked for: which image, where, for which environment, and how.

The command line builds a :class:`PublishRequest` once and the publishing code passes it whole
(:mod:`.publish` to :mod:`.ebs`) instead of a dozen loose arguments; what follows from it (the
AMI's name, description and tags) is derived here, in one place. A target for another cloud
(Google Cloud, Azure) mirrors its shape in its own folder: the stored image and the environment,
then that cloud's "where" (project and zone, subscription and resource group) and its options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import UserError
from .api import REGION_RE

if TYPE_CHECKING:
    from ...store.layout import Image

TAG = "imagebuilder:"
"""The prefix of every tag imagebuilder sets."""
_NAME_BAD = re.compile(r"[^A-Za-z0-9()\[\]./\-'@_]")


@dataclass(frozen=True)
class PublishRequest:
    """Publish ``image`` as an AMI in ``region``, copied to ``regions``, tagged for ``env``."""

    image: Image
    region: str
    env: str | None = None
    """The environment the AMI is tagged for (None: none)."""
    regions: tuple[str, ...] = ()
    """Other regions the AMI is copied to."""
    profile: str | None = None
    """The AWS profile (None: the usual credential chain)."""
    kms_key_id: str | None = None
    """Encrypt the snapshot with this KMS key (its copies with each region's default key)."""
    workers: int = 8
    """Snapshot blocks in flight at once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "regions", tuple(self.regions))
        for where in (self.region, *self.regions):
            if not REGION_RE.fullmatch(where):
                raise UserError(f"'{where}' is not an AWS region name: use one like us-east-1")

    @property
    def name(self) -> str:
        """The AMI's name (and its ``Name`` tag)."""
        return ami_name(self.image.name, self.image.version, self.image.digest)

    @property
    def description(self) -> str:
        return f"imagebuilder {self.image.name}:{self.image.version} {self.image.digest}"

    @property
    def copies(self) -> tuple[str, ...]:
        """The regions to copy to, each once, the home region left out."""
        return tuple(dict.fromkeys(r for r in self.regions if r != self.region))

    @property
    def recorded_disk_digest(self) -> str | None:
        """The disk digest the build recorded in the image's config (None for older images)."""
        disk = self.image.config.get("disk")
        return str(disk["digest"]) if isinstance(disk, dict) and disk.get("digest") else None

    def tags(self, disk_digest: str) -> list[dict[str, str]]:
        """The tags of the AMI and its snapshots: the image's name, version and digests, the
        environment; found again by :func:`~.publish.find_ami`."""
        tags = {f"{TAG}name": self.image.name, f"{TAG}version": self.image.version,
                f"{TAG}image-digest": self.image.digest, f"{TAG}disk-digest": disk_digest,
                "Name": self.name}
        if self.env:
            tags[f"{TAG}env"] = self.env
        return [{"Key": k, "Value": v} for k, v in tags.items()]


def ami_name(name: str, version: str, digest: str) -> str:
    """A valid, unique AMI name: ``NAME-VERSION-<12 hex digits of digest>``."""
    hexpart = digest.removeprefix("sha256:")[:12]
    text = _NAME_BAD.sub("_", f"{name}-{version}-{hexpart}" if version else f"{name}-{hexpart}")
    return text[-128:]
