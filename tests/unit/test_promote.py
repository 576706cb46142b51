"""Promotion in the local store: the order gate, --force, history, rollback, environments."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from imagebuilder.errors import NotFoundError, UserError
from imagebuilder.registry.promote import environments_of, history, promote
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store

ORDER = ("dev", "test", "prod")


def _image(store: Store, version: str) -> str:
    kernel = store.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE)
    app = store.add_blob_bytes(f"app {version}".encode(), INITRD_LAYER_MEDIA_TYPE)
    return store.put_image(f"hello:{version}", {"name": "hello", "version": version},
                           [kernel, app])


def _promote(store: Store, ref: str, env: str, force: bool = False) -> str | None:
    return promote(store, ref, env, ORDER, force=force, who="ci@host",
                   now=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)).previous


def test_order_gate_history_and_rollback(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    v1, v2 = _image(store, "1"), _image(store, "2")
    with pytest.raises(UserError, match="has not been promoted to 'test'.*--force"):
        _promote(store, "hello:1", "prod")
    for env in ORDER:
        assert _promote(store, "hello:1", env) is None
    assert environments_of(store, "hello", v1, ORDER) == ["dev", "test", "prod"]
    _promote(store, "hello:2", "dev")
    _promote(store, "hello:2", "test")
    assert _promote(store, "hello:2", "prod") == v1
    assert environments_of(store, "hello", v1, ORDER) == []
    assert store.resolve("hello:prod").digest == v2
    # Rollback: v1 was in test before, so it may go back to prod though test now holds v2.
    assert _promote(store, v1, "prod") == v2
    records = history(store, "hello")
    assert [(r.environment, r.digest) for r in records][-2:] == [("prod", v2), ("prod", v1)]
    assert records[-1].previous == v2 and records[-1].by == "ci@host"
    assert records[-1].at == "2026-01-02T03:04:05+00:00"
    # Environment tags are not image versions.
    assert [i.ref for i in store.images()] == ["hello:1", "hello:2"]


def test_force_skips_the_gate_and_unknown_env_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digest = _image(store, "1")
    index = store.index_path.read_bytes()
    with pytest.raises(NotFoundError, match="'staging' is not in the promotion order"):
        _promote(store, "hello:1", "staging")
    with pytest.raises(NotFoundError, match="no image 'hello:9'"):
        _promote(store, "hello:9", "dev")
    assert store.index_path.read_bytes() == index
    _promote(store, "hello:1", "prod", force=True)
    assert store.tags("hello") == {"prod": digest}


def test_env_tag_may_not_shadow_a_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _image(store, "dev")
    with pytest.raises(UserError, match="is an image version"):
        _promote(store, "hello:dev", "dev")
