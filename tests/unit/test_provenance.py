"""The provenance statement (imagebuilder/signing/provenance.py) and the DSSE envelopes it is
signed in (imagebuilder/signing/dsse.py): what they say, that the same build says it in the same
bytes, and that a changed payload or another key is refused."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imagebuilder import __version__
from imagebuilder.apps.shape import File
from imagebuilder.config import parse as config
from imagebuilder.errors import UserError
from imagebuilder.fetch.debian import Archive
from imagebuilder.fetch.lock import LockEntry
from imagebuilder.keyfiles import PrivateKey, load_private_key
from imagebuilder.registry.refs import RegistryRef
from imagebuilder.signing import dsse, provenance
from imagebuilder.store import attachments
from imagebuilder.store.layout import KERNEL_MEDIA_TYPE, Store

try:  # pytest puts tests/unit itself on sys.path while it is no package
    import archive_fixture as fx
except ImportError:
    from tests.unit import archive_fixture as fx  # type: ignore[no-redef]

# the fixtures of the signed test archive
archive_tree, gpg_key, server = fx.archive_tree, fx.gpg_key, fx.server
fast_retries = fx.fast_retries

DIGEST = "sha256:" + "ab" * 32
PROVENANCE = "https://slsa.dev/provenance/v1"
PROVENANCE_V02 = "https://slsa.dev/provenance/v0.2"
ALL = (PROVENANCE, PROVENANCE_V02, "https://cyclonedx.org/bom")
CYCLONEDX = "https://cyclonedx.org/bom"
LIBC = LockEntry("libc6", "2.41-12", "pool/main/g/glibc/libc6_2.41-12_amd64.deb", "11" * 32, 3)
BUSYBOX = LockEntry("busybox-static", "1:1.37.0-6", "pool/main/b/busybox/busybox-static_"
                    "1.37.0-6_amd64.deb", "22" * 32, 5)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "hello.jar").write_bytes(b"PK the app")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "dep.jar").write_bytes(b"PK a library")
    (tmp_path / "imagebuilder.toml").write_text(
        '[image]\nname = "hello"\nversion = "1.0.0"\n[app]\npath = "hello.jar"\n')
    (tmp_path / "imagebuilder.lock").write_text("# a lock\n")
    return tmp_path


def _facts(project: Path, **kw: object) -> provenance.BuildFacts:
    cfg = config.load(project)
    files = [File("lib/dep.jar", source=project / "lib" / "dep.jar"),
             File("hello.jar", source=project / "hello.jar"), File("app.conf", data=b"x=1\n")]
    return provenance.facts(cfg, files, DIGEST, [LIBC, BUSYBOX, LIBC], **kw)  # type: ignore[arg-type]


def test_the_statement_names_the_image_its_inputs_and_its_builder(project: Path) -> None:
    archive = provenance.ArchiveSnapshot("cd" * 32, "Sat, 15 Nov 2026 09:12:33 UTC")
    doc = json.loads(provenance.statement(_facts(project, archive=archive, epoch=1700000000)))
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["subject"] == [{"name": "hello:1.0.0", "digest": {"sha256": "ab" * 32}}]
    assert doc["predicateType"] == "https://slsa.dev/provenance/v1"
    build = doc["predicate"]["buildDefinition"]
    assert build["buildType"] == provenance.BUILD_TYPE
    external = build["externalParameters"]
    assert external["config"] == {"name": "imagebuilder.toml", "digest": {
        "sha256": _sha((project / "imagebuilder.toml").read_bytes())}}
    assert external["lock"] == {"name": "imagebuilder.lock",
                                "digest": {"sha256": _sha(b"# a lock\n")}}
    assert external["app"] == [  # by guest path, sorted; an entry's bytes hashed as they are
        {"name": "/app/app.conf", "digest": {"sha256": _sha(b"x=1\n")}},
        {"name": "/app/hello.jar", "digest": {"sha256": _sha(b"PK the app")}},
        {"name": "/app/lib/dep.jar", "digest": {"sha256": _sha(b"PK a library")}},
    ]
    assert build["internalParameters"] == {"suite": "trixie", "archive": {
        "inRelease": {"sha256": "cd" * 32}, "date": "Sat, 15 Nov 2026 09:12:33 UTC"}}
    assert build["resolvedDependencies"] == [  # once each, the epoch's ':' encoded as purl says
        {"uri": "pkg:deb/debian/busybox-static@1:1.37.0-6?arch=amd64",
         "digest": {"sha256": "22" * 32}},
        {"uri": "pkg:deb/debian/libc6@2.41-12?arch=amd64", "digest": {"sha256": "11" * 32}},
    ]
    run = doc["predicate"]["runDetails"]
    assert run == {"builder": {"id": provenance.BUILDER_ID,
                               "version": {"imagebuilder": __version__}},
                   "metadata": {"startedOn": "2023-11-14T22:13:20Z"}}


def test_the_same_build_gives_the_same_bytes_and_a_changed_input_other_bytes(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    first = provenance.statement(_facts(project))
    assert provenance.statement(_facts(project)) == first
    assert json.loads(first)["predicate"]["runDetails"]["metadata"] == {
        "startedOn": "1970-01-02T00:00:00Z"}  # the build's one time, not the clock's
    (project / "hello.jar").write_bytes(b"PK the app, version 2")
    assert provenance.statement(_facts(project)) != first


def test_the_v02_rendition_says_the_same_as_v1_for_cosigns_slsaprovenance_type(
        project: Path) -> None:
    archive = provenance.ArchiveSnapshot("cd" * 32, "Sat, 15 Nov 2026 09:12:33 UTC")
    v1 = json.loads(provenance.statement(_facts(project, archive=archive, epoch=0)))
    doc = json.loads(provenance.v02(provenance.statement(_facts(project, archive=archive,
                                                                epoch=0))))
    assert (doc["_type"], doc["subject"]) == (v1["_type"], v1["subject"])
    assert doc["predicateType"] == PROVENANCE_V02
    predicate = doc["predicate"]
    build = v1["predicate"]["buildDefinition"]
    assert predicate["builder"] == {"id": provenance.BUILDER_ID}
    assert predicate["buildType"] == provenance.BUILD_TYPE
    assert predicate["invocation"]["parameters"] == build["externalParameters"]
    assert predicate["invocation"]["environment"] == build["internalParameters"]
    assert predicate["invocation"]["configSource"] == {
        "uri": "imagebuilder.toml", "entryPoint": "imagebuilder build",
        "digest": build["externalParameters"]["config"]["digest"]}
    assert predicate["metadata"]["buildStartedOn"] == "1970-01-01T00:00:00Z"
    assert [m["uri"] for m in predicate["materials"]] == [
        "pkg:deb/debian/busybox-static@1:1.37.0-6?arch=amd64",
        "pkg:deb/debian/libc6@2.41-12?arch=amd64", "imagebuilder.toml", "imagebuilder.lock",
        "/app/app.conf", "/app/hello.jar", "/app/lib/dep.jar"]


def test_a_build_from_its_lock_names_no_archive_index_and_zero_config_no_config_file(
        project: Path) -> None:
    cfg = config.from_jar(project / "hello.jar", "hello", "2.0")
    doc = json.loads(provenance.statement(provenance.facts(cfg, [], DIGEST, [], epoch=0)))
    build = doc["predicate"]["buildDefinition"]
    assert build["internalParameters"] == {"suite": "trixie"}
    assert set(build["externalParameters"]) == {"app", "lock"}  # the jar's lock, beside it
    (project / "imagebuilder.lock").unlink()
    doc = json.loads(provenance.statement(provenance.facts(cfg, [], DIGEST, [], epoch=0)))
    assert set(doc["predicate"]["buildDefinition"]["externalParameters"]) == {"app"}


# --- DSSE --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _sign(key: ec.EllipticCurvePrivateKey) -> dsse.Signer:
    return lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))


def _verify(key: ec.EllipticCurvePrivateKey) -> dsse.Verifier:
    def verify(data: bytes, signature: bytes) -> bool:
        try:
            key.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except Exception:
            return False
        return True
    return verify


def test_pae_is_the_dsse_specs_encoding() -> None:
    # The example of the DSSE protocol document.
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")


def test_an_envelope_signs_the_pae_of_its_payload(key: ec.EllipticCurvePrivateKey) -> None:
    statement = b'{"predicateType":"https://slsa.dev/provenance/v1"}'
    env = json.loads(dsse.envelope(statement, _sign(key)))
    assert env["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(env["payload"]) == statement
    assert [set(s) for s in env["signatures"]] == [{"keyid", "sig"}]
    key.public_key().verify(base64.b64decode(env["signatures"][0]["sig"]),
                            dsse.pae(env["payloadType"], statement), ec.ECDSA(hashes.SHA256()))
    opened = dsse.open_envelope(json.dumps(env).encode(), _verify(key), "the attestation")
    assert opened == dsse.Opened("application/vnd.in-toto+json", statement)


def test_a_changed_payload_type_or_payload_or_another_key_is_refused(
        key: ec.EllipticCurvePrivateKey) -> None:
    env = json.loads(dsse.envelope(b'{"a":1}', _sign(key)))
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(UserError, match="^the attestation: no signature of the DSSE envelope "
                                        "verifies with the key$"):
        dsse.open_envelope(json.dumps(env).encode(), _verify(other), "the attestation")
    for change in ({"payloadType": "text/plain"},
                   {"payload": base64.b64encode(b'{"a":2}').decode()}):
        with pytest.raises(UserError, match="no signature"):
            dsse.open_envelope(json.dumps({**env, **change}).encode(), _verify(key), "x")
    with pytest.raises(UserError, match="^x: not a DSSE envelope"):
        dsse.open_envelope(b'{"payload": "%%%"}', _verify(key), "x")


def test_the_sbom_statement_carries_the_sbom_as_its_predicate_in_an_att_layer(
        key: ec.EllipticCurvePrivateKey) -> None:
    sbom = b'{"bomFormat":"CycloneDX","specVersion":"1.6","components":[]}'
    statement = dsse.sbom_statement("hello:1.0.0", DIGEST, sbom)
    doc = json.loads(statement)
    assert doc["predicateType"] == "https://cyclonedx.org/bom"
    assert doc["predicate"] == json.loads(sbom)
    assert doc["subject"] == [{"name": "hello:1.0.0", "digest": {"sha256": "ab" * 32}}]
    made = dsse.layer(statement, _sign(key))
    assert made.annotations == {"predicateType": "https://cyclonedx.org/bom",
                                "dev.cosignproject.cosign/signature": ""}
    assert dsse.open_envelope(made.data, _verify(key), "x").payload == statement


# --- attesting an image of the store -----------------------------------------------------------


def _stored_image(tmp_path: Path, statements: bool = True) -> tuple[Store, str]:
    """An image in a real store, with the statements a build attaches (unless not)."""
    store = Store(tmp_path / "store")
    kernel = store.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE)
    digest = store.put_image("hello:1.0.0", {"name": "hello", "version": "1.0.0"}, [kernel])
    if statements:
        facts = provenance.BuildFacts("hello:1.0.0", digest, None, None, (), "trixie", None,
                                      (LIBC,), 0)
        provenance.record(store, facts)
        attachments.attach(store, digest, dsse.CYCLONEDX_ARTIFACT_TYPE,
                           b'{"bomFormat":"CycloneDX"}', dsse.CYCLONEDX_ARTIFACT_TYPE)
    return store, digest


def _private(path: Path, key: ec.EllipticCurvePrivateKey) -> PrivateKey:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return load_private_key(path)


def test_sign_attests_the_provenance_and_the_sbom_once_per_key(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    store, digest = _stored_image(tmp_path)
    private = _private(tmp_path / "release.key", key)
    result = dsse.attest(store, "hello:1.0.0", private)
    assert result == dsse.AttestResult(ALL, (), ())
    assert result.describe() == ("attested its SLSA v1 provenance, SLSA v0.2 provenance and "
                                 "CycloneDX SBOM")
    found = dsse.local_layers(store, digest)
    assert sorted(layer.predicate_type for _, layer in found) == sorted(ALL)
    for _, layer in found:
        statement = json.loads(dsse.open_envelope(layer.data, _verify(key), "x").payload)
        assert statement["subject"][0]["digest"] == {"sha256": digest.removeprefix("sha256:")}
        assert statement["predicateType"] == layer.predicate_type
        assert layer.annotations["dev.cosignproject.cosign/signature"] == ""
    # The same key again: nothing new. Another key: attested again, beside the first.
    again = dsse.attest(store, "hello:1.0.0", private)
    assert again == dsse.AttestResult((), ALL, ())
    assert len(dsse.local_layers(store, digest)) == 3
    other = _private(tmp_path / "other.key", ec.generate_private_key(ec.SECP256R1()))
    assert dsse.attest(store, "hello:1.0.0", other).added == ALL
    assert len(dsse.local_layers(store, digest)) == 6


def test_an_image_built_before_provenance_has_nothing_to_attest(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    store, digest = _stored_image(tmp_path, statements=False)
    result = dsse.attest(store, "hello:1.0.0", _private(tmp_path / "k.key", key))
    assert result == dsse.AttestResult((), (), ALL)
    assert result.describe().startswith("no SLSA v1 provenance, SLSA v0.2 provenance and "
                                        "CycloneDX SBOM stored with it")
    assert dsse.local_layers(store, digest) == []


def test_a_tampered_attestation_is_not_taken_for_one(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """An envelope whose payload was changed after signing does not count as attested: sign
    attests again rather than trusting it."""
    store, digest = _stored_image(tmp_path)
    private = _private(tmp_path / "release.key", key)
    env = json.loads(dsse.envelope(b'{"predicateType":"https://slsa.dev/provenance/v1"}',
                                   _sign(key)))
    env["payload"] = base64.b64encode(b'{"predicateType":"forged"}').decode()
    attachments.attach(store, digest, dsse.ATTESTATION_ARTIFACT_TYPE,
                       json.dumps(env).encode(), dsse.ENVELOPE_MEDIA_TYPE,
                       {"predicateType": PROVENANCE}, keep=True)
    assert dsse.attest(store, "hello:1.0.0", private).added == ALL


# --- the archive index a build resolved against ----------------------------------------------


def test_the_archive_read_knows_its_inrelease_digest_and_date(
        server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path) -> None:
    archive = Archive(server.url, fx.SUITE, tmp_path, keyring=archive_tree.key.keyring)
    assert archive.inrelease is None  # nothing read yet
    archive.release()
    inrelease = (archive_tree.root / "dists" / fx.SUITE / "InRelease").read_bytes()
    assert archive.inrelease == (_sha(inrelease), "Sat, 01 Nov 2025 00:00:00 UTC")
    found = provenance.ArchiveSnapshot.of(archive.inrelease)
    assert found == provenance.ArchiveSnapshot(_sha(inrelease), "Sat, 01 Nov 2025 00:00:00 UTC")
    assert provenance.ArchiveSnapshot.of(None) is None


@pytest.mark.parametrize("artifact, payload, why", [
    ("provenance", b'{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"x",'
                   b'"digest":{"sha256":"' + b"0" * 64 + b'"}}],"predicateType":"p"}',
     "provenance stored with hello:1.0.0 ({short}) is about another image"),
    ("provenance", b"not json", "provenance stored with hello:1.0.0 ({short}) is not an "
                                "in-toto statement"),
    ("provenance", b'{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"x",'
                   b'"digest":{"sha256":"SUBJECT"}}],"predicateType":"p","predicate":{}}',
     "provenance stored with hello:1.0.0 ({short}) is not a SLSA provenance v1 predicate"),
    ("sbom", b'{"spdxVersion":"SPDX-2.3"}', "CycloneDX SBOM stored with hello:1.0.0 ({short}) "
                                            "is not a CycloneDX JSON document"),
])
def test_what_is_stored_with_an_image_is_checked_before_it_is_signed(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey, artifact: str, payload: bytes,
        why: str) -> None:
    """A pulled image's statements came from a registry: sign refuses, with one line, one
    that is not a statement about this image rather than vouch for it."""
    store, digest = _stored_image(tmp_path)
    artifact_type = (provenance.ARTIFACT_TYPE if artifact == "provenance"
                     else dsse.CYCLONEDX_ARTIFACT_TYPE)
    attachments.attach(store, digest, artifact_type,
                       payload.replace(b"SUBJECT", digest[7:].encode()), artifact_type)
    with pytest.raises(UserError) as e:
        dsse.attest(store, "hello:1.0.0", _private(tmp_path / "k.key", key))
    assert str(e.value) == (f"the {why.format(short=digest[:19])}: refused to attest it; build "
                            "the image again")
    assert dsse.local_layers(store, digest) == []


# --- several statements of one type; envelopes about other images (review F3, F9) -------------


def test_sign_refuses_to_attest_one_of_several_provenances(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """F3: a second provenance (a registry listed it; a pull kept it) is never chosen between:
    sign refuses, with one line, and signs nothing."""
    store, digest = _stored_image(tmp_path)
    forged = json.loads(attachments.payload(store, attachments.referrers(
        store, digest, provenance.ARTIFACT_TYPE)[0]))
    forged["predicate"]["runDetails"]["builder"]["id"] = "https://evil.example/builder"
    attachments.attach(store, digest, provenance.ARTIFACT_TYPE, json.dumps(forged).encode(),
                       provenance.ARTIFACT_TYPE, keep=True)
    with pytest.raises(UserError, match=r"^hello:1.0.0 \(sha256:[0-9a-f]{12}\) has 2 provenance "
                                        r"statements attached \(sha256:.* made here, sha256:.* "
                                        r"made here\), not one: refused to choose"):
        dsse.attest(store, "hello:1.0.0", _private(tmp_path / "k.key", key))
    assert dsse.local_layers(store, digest) == []


def test_an_envelope_about_another_image_does_not_count_as_attested(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """F9: the key's attestations of image x, copied onto y (as a pull of y's referrers may bring
    them), or relabelled as another predicate type, do not stop sign attesting y itself."""
    store, x = _stored_image(tmp_path)
    kernel = store.add_blob_bytes(b"kernel y", KERNEL_MEDIA_TYPE)
    y = store.put_image("y:1.0", {"name": "y", "version": "1.0"}, [kernel])
    provenance.record(store, provenance.BuildFacts("y:1.0", y, None, None, (), "trixie", None,
                                                   (LIBC,), 0))
    attachments.attach(store, y, dsse.CYCLONEDX_ARTIFACT_TYPE, b'{"bomFormat":"CycloneDX"}',
                       dsse.CYCLONEDX_ARTIFACT_TYPE)
    private = _private(tmp_path / "k.key", key)
    assert dsse.attest(store, "hello:1.0.0", private).added == ALL
    for desc, layer in dsse.local_layers(store, x):
        attachments.attach(store, y, dsse.ATTESTATION_ARTIFACT_TYPE, layer.data,
                           dsse.ENVELOPE_MEDIA_TYPE, dict(desc.annotations or {}), keep=True)
    result = dsse.attest(store, "y:1.0", private)
    assert result == dsse.AttestResult(ALL, (), ())
    for _, layer in dsse.local_layers(store, y):
        statement = json.loads(dsse.open_envelope(layer.data, _verify(key), "x").payload)
        if statement["subject"][0]["digest"]["sha256"] == y[7:]:
            assert statement["predicateType"] == layer.predicate_type
    # y's own SBOM envelope, relabelled as SLSA v1 provenance, does not count as provenance.
    again = tmp_path / "again"
    store2, z = _stored_image(again)
    made = dsse.layer(dsse.sbom_statement("hello:1.0.0", z, b'{"bomFormat":"CycloneDX"}'),
                      _sign(key))
    attachments.attach(store2, z, dsse.ATTESTATION_ARTIFACT_TYPE, made.data,
                       dsse.ENVELOPE_MEDIA_TYPE, {**made.annotations, "predicateType": PROVENANCE},
                       keep=True)
    result = dsse.attest(store2, "hello:1.0.0", _private(again / "k.key", key))
    assert result == dsse.AttestResult((PROVENANCE, PROVENANCE_V02), (CYCLONEDX,), ())


def test_sign_by_tag_attests_the_digest_it_signed_not_what_the_tag_names_later(
        tmp_path: Path, key: ec.EllipticCurvePrivateKey, monkeypatch: pytest.MonkeyPatch) -> None:
    """sign HOST/REPO:TAG resolves the tag once (review D, F14): the attestations go to the
    digest the signature was made for, even if the tag names another image by then."""
    store, digest = _stored_image(tmp_path)
    other = store.put_image("hello:2.0.0", {"name": "hello", "version": "2.0.0"},
                            [store.add_blob_bytes(b"other kernel", KERNEL_MEDIA_TYPE)])
    monkeypatch.setattr(dsse, "remote_digest", lambda client, target: other)  # the tag moved
    pushed: list[str] = []
    monkeypatch.setattr(dsse, "push_attestations",
                        lambda store, d, target, client: pushed.append(d) or 0)
    target = RegistryRef.parse("127.0.0.1:5000/hello:1.0.0")
    result = dsse.attest(store, str(target), _private(tmp_path / "k.pem", key),
                         object(), target, digest)  # type: ignore[arg-type]
    assert result.added == ALL and pushed == [digest]
    assert dsse.local_layers(store, other) == []
