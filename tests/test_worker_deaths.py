"""A loader worker's death gets the same one-line cause whichever of torch's two checks notices it first."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

from openslip.data.workers import describe_worker_death, named_deaths


class _Batches:
    """A DataLoader iterator's stand-in: two batches, then torch's error for a dead worker."""

    def __init__(self, message: str, exitcode: int | None) -> None:
        self._workers = [SimpleNamespace(pid=41, exitcode=0), SimpleNamespace(pid=42, exitcode=exitcode)]
        self.message, self.left = message, 2

    def __iter__(self) -> _Batches:
        return self

    def __next__(self) -> int:
        if self.left == 0:
            raise RuntimeError(self.message)
        self.left -= 1
        return self.left


def _last_error(batches: _Batches) -> tuple[list[int], RuntimeError]:
    seen = []
    with pytest.raises(RuntimeError) as caught:
        for batch in named_deaths(batches):
            seen.append(batch)
    return seen, caught.value


def test_a_death_noticed_while_waiting_names_the_signal_from_the_exit_status():
    seen, err = _last_error(_Batches("DataLoader worker (pid(s) 42) exited unexpectedly", -signal.SIGKILL))
    assert seen == [1, 0]
    assert describe_worker_death(err) == "data loader worker (pid 42) was killed by signal SIGKILL (out of memory?)"


def test_the_sigchld_message_is_the_same_line():
    message = f"DataLoader worker (pid 42) is killed by signal: {signal.strsignal(signal.SIGKILL)}."
    _, err = _last_error(_Batches(message, -signal.SIGKILL))
    assert describe_worker_death(err) == "data loader worker (pid 42) was killed by signal SIGKILL (out of memory?)"


@pytest.mark.parametrize("exitcode", [None, 1])
def test_without_a_signal_in_the_exit_status_the_error_is_left_as_torch_wrote_it(exitcode):
    message = "DataLoader worker (pid(s) 42) exited unexpectedly"
    _, err = _last_error(_Batches(message, exitcode))
    assert str(err) == message
    assert describe_worker_death(err) == "data loader worker (pid 42) exited unexpectedly"


def test_other_errors_pass_through():
    _, err = _last_error(_Batches("batch 3 arrived at position 2", -signal.SIGKILL))
    assert str(err) == "batch 3 arrived at position 2" and describe_worker_death(err) is None
