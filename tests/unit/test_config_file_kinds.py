"""The config path must name a regular file: a named pipe, a device or a directory is refused at once
with a clear error (never a hang waiting for a writer, never an endless read)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from reconciler.config.loader import MAX_CONFIG_BYTES, load_config
from reconciler.errors import ConfigError

# Long enough for a slow machine, short enough that a hang fails the test instead of the run.
TIMEOUT = 30.0


def _load_in_thread(path: str) -> BaseException | None:
    """``load_config(path)`` in a daemon thread; the error it raised, or fails if it never returns."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            load_config(path)
        except BaseException as e:  # handed back to the test
            outcome.append(e)
        else:
            outcome.append(None)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive(), f"load_config({path!r}) did not return"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "connref.yaml"
    os.mkfifo(fifo)
    err = _load_in_thread(str(fifo))
    assert isinstance(err, ConfigError)
    assert str(fifo) in str(err)
    assert "named pipe" in str(err) and "not a regular file" in str(err)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_character_device_is_refused() -> None:
    err = _load_in_thread("/dev/zero")
    assert isinstance(err, ConfigError)
    assert "character device" in str(err) and "not a regular file" in str(err)


def test_directory_is_refused(tmp_path: Path) -> None:
    err = _load_in_thread(str(tmp_path))
    assert isinstance(err, ConfigError)
    assert "directory" in str(err)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    err = _load_in_thread(str(tmp_path / "nope.yaml"))
    assert isinstance(err, ConfigError)
    assert "nope.yaml" in str(err) and "No such file" in str(err)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_text("version: 1\n", encoding="utf-8")
    link = tmp_path / "connref.yaml"
    link.symlink_to(real)
    err = _load_in_thread(str(link))
    # It was read: the error is about the content, not the kind of file.
    assert isinstance(err, ConfigError)
    assert "required key is missing" in str(err)


@pytest.mark.skipif(not os.path.exists("/dev/urandom"), reason="no /dev/urandom")
def test_random_device_is_refused() -> None:
    err = _load_in_thread("/dev/urandom")
    assert "character device" in str(err)


def test_a_50_mb_file_is_refused_at_once_naming_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "connref.yaml"
    with open(big, "wb") as f:
        f.write(b"version: 1\n")
        f.truncate(50 * 1000 * 1000)  # sparse: nothing is written, the size is what is checked
    with pytest.raises(ConfigError) as info:
        load_config(str(big))
    text = str(info.value)
    assert "is 47.7 MiB" in text
    assert f"at most 32 MiB ({MAX_CONFIG_BYTES} bytes)" in text


def test_a_file_at_the_limit_is_read(tmp_path: Path) -> None:
    config = tmp_path / "connref.yaml"
    body = "version: 1\nsolution: ContosoFlows\nreferences: {}\nenvironments: {}\n"
    config.write_text(body + "#" * (MAX_CONFIG_BYTES - len(body) - 1) + "\n")
    assert config.stat().st_size == MAX_CONFIG_BYTES
    with pytest.raises(ConfigError) as info:
        load_config(str(config))
    assert "MiB" not in str(info.value)  # refused for its content, not its size
