"""A test leaves nothing in /tmp: its server's directory goes with it, unless it failed
and the run asked to keep it (EMBER_KEEP_TEST_DIRS=1)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import KEEP_ENV, Failures, running_server, scratch_dir


@pytest.mark.server  # starts a real `ember serve`
def test_a_server_directory_is_removed_with_the_server() -> None:
    with running_server() as server:
        work = server.data_dir.parent
        assert (server.data_dir / "ember.db").exists()
    assert not work.exists()


def test_kept_only_when_a_test_failed_and_the_run_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEEP_ENV, "1")
    with scratch_dir() as passed:
        pass
    assert not passed.exists()  # asked to keep, but nothing failed

    monkeypatch.setattr(Failures, "count", Failures.count)
    with scratch_dir() as failed:
        Failures.count += 1  # what pytest_runtest_logreport counts for a failed test
    assert failed.exists()
    shutil.rmtree(failed)

    monkeypatch.delenv(KEEP_ENV)
    with pytest.raises(RuntimeError), scratch_dir() as raised:
        raise RuntimeError("a failing fixture body")
    assert not raised.exists()  # a failure, but keeping was not asked for
