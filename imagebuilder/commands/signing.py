"""The signature commands: ``sign`` and ``verify``, for an image of the store or of a registry.

Thin like cli.py: read the keys (:mod:`imagebuilder.keyfiles`), call
:mod:`imagebuilder.signing.signatures`, print. A REF of the form HOST/REPO:TAG or HOST/REPO@DIGEST
is an image in that registry; anything else (NAME:VERSION, NAME:ENV, a digest) one of the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from . import get_home
from .options import json_option
from .render import emit_json

if TYPE_CHECKING:
    from ..registry.client import Client

_insecure = click.option("--insecure", is_flag=True,
                         help="Plain HTTP, without TLS (only for a registry on loopback).")


def _client(ref: str, insecure: bool) -> tuple[Client, Any]:
    from ..registry.transfer import Client, RegistryRef
    target = RegistryRef.parse(ref)
    return Client(target.host, insecure=insecure), target


@click.command("sign")
@click.argument("ref")
@click.option("--key", "key_path", required=True, metavar="KEY",
              help="ECDSA P-256 private key: PEM, or cosign's cosign.key (its password from "
                   "COSIGN_PASSWORD or IMAGEBUILDER_KEY_PASSWORD).")
@_insecure
@json_option()
def sign_cmd(ref: str, key_path: str, insecure: bool, as_json: bool) -> None:
    """Sign image REF's manifest digest with KEY, in cosign's format: in the local store
    (NAME:VERSION or a digest; 'push' takes the signature along) or in a registry
    (HOST/REPO:TAG or @DIGEST, at the tag sha256-<hex>.sig, as 'cosign sign' does)."""
    from ..keyfiles import load_private_key
    from ..signing import dsse, signatures
    key = load_private_key(key_path)
    if signatures.is_registry_ref(ref):
        client, target = _client(ref, insecure)
        result = signatures.sign_remote(client, target, key)
        attested = dsse.attest(get_home().store, ref, key, client, target, result.digest)
    else:
        result = signatures.sign_local(get_home().store, ref, key)
        attested = dsse.attest(get_home().store, ref, key)  # its provenance and SBOM
    if as_json:
        emit_json({**result.to_json(), "attestations": attested.to_json()})
        return
    what = "signed" if result.added else "already signed"
    click.echo(f"{what} {result.ref} ({result.digest[:19]}) with {result.key.path} "
               f"({result.key.fingerprint[:19]}): {result.location}")
    click.echo(attested.describe())


@click.command("verify")
@click.argument("ref")
@click.option("--key", "key_paths", required=True, multiple=True, metavar="PUB",
              help="A trusted public key (PEM, e.g. cosign.pub, or a certificate); repeat for "
                   "several: one signature by any of them is enough.")
@_insecure
@json_option()
def verify_cmd(ref: str, key_paths: tuple[str, ...], insecure: bool, as_json: bool) -> None:
    """Check that image REF (of the store, or HOST/REPO:TAG or @DIGEST in a registry) carries
    a signature by one of the keys over exactly its manifest digest; exit 2 with one line
    saying what is wrong if not."""
    from ..keyfiles import load_public_keys
    from ..signing import signatures
    keys = load_public_keys(key_paths)
    source: Any = get_home().store
    target: Any = ref
    if signatures.is_registry_ref(ref):
        source, target = _client(ref, insecure)
    result = signatures.verified(source, target, keys).require()
    if as_json:
        emit_json(result.to_json())
        return
    signers = ", ".join(f"{k.path} ({k.fingerprint[:19]})" for k in result.signers)
    click.echo(f"verified {result.image} ({result.digest[:19]}): signed with {signers}")


COMMANDS: list[click.Command] = [sign_cmd, verify_cmd]
