"""Loading, validating and saving emulator data files (emulator-only: they are the emulator's files)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from reconciler.emulator.store import EnvironmentStore, new_environment_data

pytestmark = pytest.mark.emulator_only(reason="the emulator's data files")


def write(tmp_path: Path, data: dict[str, Any]) -> str:
    p = tmp_path / "env.json"
    p.write_text(json.dumps(data))
    return str(p)


def test_round_trip_through_file(tmp_path: Path, emulator_data: dict[str, Any]) -> None:
    path = write(tmp_path, emulator_data)
    store = EnvironmentStore.from_file(path)
    assert store.data == emulator_data
    assert store.path == os.path.abspath(path)


def test_unknown_top_level_key_names_file_and_key(tmp_path: Path, signing_key_pem: str) -> None:
    data = new_environment_data(signing_key_pem=signing_key_pem)
    data["conections"] = []
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=r"env\.json.*'conections'"):
        EnvironmentStore.from_file(path)


def test_wrong_format_is_refused(tmp_path: Path, signing_key_pem: str) -> None:
    data = new_environment_data(signing_key_pem=signing_key_pem)
    data["format"] = "connref-emulator/9"
    with pytest.raises(ValueError, match="format"):
        EnvironmentStore.from_file(write(tmp_path, data))


def test_missing_lists_default_to_empty(signing_key_pem: str) -> None:
    data = new_environment_data(signing_key_pem=signing_key_pem)
    del data["workflows"]
    store = EnvironmentStore.from_dict(data)
    assert store.data["workflows"] == []


def test_save_is_sorted_pretty_and_atomic(tmp_path: Path, emulator_data: dict[str, Any]) -> None:
    path = write(tmp_path, emulator_data)
    store = EnvironmentStore.from_file(path)
    store.data["connectionreferences"][0]["description"] = "changed"
    store.save()
    text = Path(path).read_text()
    assert text.startswith('{\n  "applications"')
    assert json.loads(text)["connectionreferences"][0]["description"] == "changed"
    assert [p.name for p in tmp_path.iterdir()] == ["env.json"]  # no temp file left behind


def test_next_version_increases_and_is_stored(signing_key_pem: str) -> None:
    store = EnvironmentStore.from_dict(new_environment_data(signing_key_pem=signing_key_pem))
    a, b = store.next_version(), store.next_version()
    assert b == a + 1
    assert store.data["next_versionnumber"] == b + 1
