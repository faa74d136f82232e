"""Thread-count policy: --threads > $DPOSER_THREADS > $OMP_NUM_THREADS > one thread unless the batch is large."""

import pytest
import torch

from dposer_cli.core import device
from dposer_cli.core.device import PARALLEL_MIN_ITEMS, THREADS_ENV, configure_threads
from dposer_cli.core.errors import InputError


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "available_cores", lambda: 4)
    yield
    torch.set_num_threads(before)


def test_policy_is_one_thread_for_small_work_and_all_cores_for_large():
    assert configure_threads(None) == 1 and torch.get_num_threads() == 1
    assert configure_threads(None, work_items=10) == 1
    assert configure_threads(None, work_items=PARALLEL_MIN_ITEMS) == 4 and torch.get_num_threads() == 4


def test_explicit_option_beats_both_variables(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert configure_threads(2, work_items=1) == 2
    assert configure_threads(None, work_items=1) == 3  # $DPOSER_THREADS beats $OMP_NUM_THREADS
    monkeypatch.delenv(THREADS_ENV)
    assert configure_threads(None, work_items=10**6) == 2  # $OMP_NUM_THREADS beats the policy


def test_omp_nesting_list_and_malformed_values(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")
    assert configure_threads(None) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # someone else's variable: ignored, policy applies
    assert configure_threads(None) == 1
    monkeypatch.setenv(THREADS_ENV, "0")
    with pytest.raises(InputError, match="DPOSER_THREADS") as err:
        configure_threads(None)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="at least 1"):
        configure_threads(0)


def test_more_threads_than_cores_are_lowered_to_the_cores_with_a_warning(monkeypatch, caplog):
    """--threads 99999 crashed OpenMP (a segfault) and 1000 made runs 20-50x slower."""
    assert configure_threads(99999) == 4 and torch.get_num_threads() == 4
    assert "--threads 99999: this process may run on 4 cores; using 4 threads" in caplog.text
    monkeypatch.setenv(THREADS_ENV, "64")
    assert configure_threads(None) == 4
    assert "$DPOSER_THREADS 64" in caplog.text
    assert configure_threads(3) == 3  # within the cores: as asked
