"""The CPU allocator policy: tuned only while an inference runs, restored after, re-entrant."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_mpt_deblur import deblur
from napari_mpt_deblur.engine import _allocator


class FakeLibc:
    """Records mallopt/malloc_trim calls instead of changing the process's allocator."""

    def __init__(self, max_mmap_threshold: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.max_mmap_threshold = max_mmap_threshold

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append(("mallopt", option, value))
        limit = self.max_mmap_threshold
        return int(not (option == _allocator._M_MMAP_THRESHOLD and limit and value > limit))

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad))
        return 1


@pytest.fixture
def fake_libc(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(_allocator, "_libc", libc)
    monkeypatch.setattr(_allocator, "_checked", True)
    monkeypatch.setattr(_allocator, "_depth", 0)
    return libc


def test_tunes_on_entry_and_restores_and_trims_on_exit(fake_libc):
    with _allocator.retain_freed_memory():
        assert fake_libc.calls == [
            ("mallopt", _allocator._M_MMAP_THRESHOLD, _allocator._KEEP),
            ("mallopt", _allocator._M_TRIM_THRESHOLD, _allocator._KEEP),
        ]
    assert fake_libc.calls[2:] == [
        ("mallopt", _allocator._M_MMAP_THRESHOLD, _allocator._RESTORE_MMAP),
        ("mallopt", _allocator._M_TRIM_THRESHOLD, _allocator._RESTORE_TRIM),
        ("trim", 0),
    ]


def test_older_glibc_refusing_a_huge_mmap_threshold_gets_the_largest_it_accepts(monkeypatch):
    libc = FakeLibc(max_mmap_threshold=32 * 2**20)
    monkeypatch.setattr(_allocator, "_libc", libc)
    monkeypatch.setattr(_allocator, "_checked", True)
    monkeypatch.setattr(_allocator, "_depth", 0)
    with _allocator.retain_freed_memory():
        assert libc.calls[:2] == [
            ("mallopt", _allocator._M_MMAP_THRESHOLD, _allocator._KEEP),
            ("mallopt", _allocator._M_MMAP_THRESHOLD, 32 * 2**20),
        ]
        assert libc.calls[2] == ("mallopt", _allocator._M_TRIM_THRESHOLD, _allocator._KEEP)


def test_nested_and_concurrent_uses_restore_only_once_at_the_end(fake_libc):
    inside = threading.Event()
    release = threading.Event()

    def other_job():
        with _allocator.retain_freed_memory():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other_job)
    with _allocator.retain_freed_memory():
        thread.start()
        assert inside.wait(5)
        with _allocator.retain_freed_memory():
            pass
    # Two jobs overlapped and one nested: still tuned once, nothing restored while one runs.
    assert [c for c in fake_libc.calls if c[0] == "trim"] == []
    release.set()
    thread.join(5)
    assert fake_libc.calls.count(("trim", 0)) == 1
    assert len(fake_libc.calls) == 5


def test_restores_when_the_body_raises(fake_libc):
    with pytest.raises(ValueError), _allocator.retain_freed_memory():
        raise ValueError("boom")
    assert fake_libc.calls[-1] == ("trim", 0)
    assert _allocator._depth == 0


def test_environment_switch_and_user_tuning_disable_it(monkeypatch):
    monkeypatch.setattr(_allocator, "_libc", None)
    monkeypatch.setattr(_allocator, "_checked", False)
    monkeypatch.setenv("NAPARI_MPT_DEBLUR_MALLOC", "0")
    assert not _allocator.tuning_available()
    monkeypatch.setattr(_allocator, "_checked", False)
    monkeypatch.delenv("NAPARI_MPT_DEBLUR_MALLOC")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert not _allocator.tuning_available()


def test_engine_output_does_not_depend_on_the_policy(tiny_model, rng, monkeypatch):
    image = (rng.random((150, 170)) * 4000).astype(np.uint16)
    tuned = deblur(image, tiny_model, device="cpu")
    monkeypatch.setattr(_allocator, "_libc", None)
    monkeypatch.setattr(_allocator, "_checked", True)
    plain = deblur(image, tiny_model, device="cpu")
    np.testing.assert_array_equal(tuned, plain)
