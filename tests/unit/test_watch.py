"""The watch loop's decisions (``hooks.watch.Watch``), with no socket and a clock the test moves: what a driver
does next after each outcome. The drivers themselves are tested against the stub in test_watch_drivers.py and
against a real head in tests/integration."""

from __future__ import annotations

import itertools
import time

import pytest

from airflow_ray_train.exceptions import RayTrainAuthError, RayTrainClusterError
from airflow_ray_train.hooks import watch as watch_module
from airflow_ray_train.hooks.jobs_api import JobInfo
from airflow_ray_train.hooks.log_follower import LogFollower, LogReader
from airflow_ray_train.hooks.watch import (
    FINISHING_POLL_INTERVAL,
    LIVE_LOG_BYTES,
    MESSAGE_TOO_BIG,
    NORMAL_CLOSE,
    RECONNECT_MAX_S,
    STREAM_POLL_INTERVAL,
    ContactLost,
    Do,
    Watch,
)
from airflow_ray_train_runtime.spec import MANIFEST_MARKER

RUNNING = JobInfo.from_api({"submission_id": "j", "status": "RUNNING"})
SUCCEEDED = JobInfo.from_api({"submission_id": "j", "status": "SUCCEEDED"})
UNREACHABLE = RayTrainClusterError("cannot reach the Ray cluster at http://ray:8265 (ConnectError)")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: Clock, **kwargs) -> Watch:
    return Watch("j", LogFollower(), clock=clock, **kwargs)


def opened(watch: Watch) -> None:
    assert watch.next().do is Do.OPEN_STREAM
    watch.stream_opened()


def running(clock: Clock, **kwargs) -> Watch:
    """A watch whose stream opened and whose first poll said RUNNING."""
    watch = make(clock, **kwargs)
    opened(watch)
    assert watch.next().do is Do.POLL
    watch.polled(RUNNING)
    return watch


def test_a_watch_opens_the_stream_then_polls_then_reads_the_stream_until_the_backstop_poll():
    clock = Clock()
    watch = make(clock, poll_interval=5.0)
    opened(watch)
    assert watch.next().do is Do.POLL
    watch.polled(RUNNING)
    step = watch.next()
    assert step.do is Do.READ_STREAM and step.seconds == STREAM_POLL_INTERVAL  # the stream carries the log
    clock.advance(STREAM_POLL_INTERVAL)
    assert watch.next().do is Do.POLL


def test_the_manifest_going_by_brings_the_next_poll_forward_and_a_stream_ray_closed_after_the_end_is_the_whole_log():
    clock = Clock()
    watch = running(clock)
    assert watch.feed("epoch 1\n" + MANIFEST_MARKER + "{}\n") == ["epoch 1"]
    assert watch.read_left() == pytest.approx(FINISHING_POLL_INTERVAL)  # the read ends: poll fast
    clock.advance(FINISHING_POLL_INTERVAL)
    assert watch.next().do is Do.POLL
    watch.polled(SUCCEEDED)
    step = watch.next()
    assert step.do is Do.READ_STREAM  # Ray sends the rest of the log, then closes the stream
    watch.stream_closed(NORMAL_CLOSE)
    assert watch.next().do is Do.RETURN  # no GET /logs: the stream showed all of it
    assert watch.log_complete


def test_a_stream_ray_closed_normally_before_the_poll_saw_the_end_also_showed_the_whole_log():
    clock = Clock()
    watch = running(clock)
    watch.stream_closed(NORMAL_CLOSE)  # Ray closed it: the job ended, the poll has not said so yet
    clock.advance(FINISHING_POLL_INTERVAL)
    assert watch.next().do is Do.POLL
    watch.polled(SUCCEEDED)
    assert watch.next().do is Do.RETURN and watch.log_complete
    dropped = make(clock)  # a drop (1006) before the end: the rest of the log is read once
    opened(dropped)
    dropped.next()
    dropped.polled(RUNNING)
    dropped.stream_closed(1006)
    clock.advance(FINISHING_POLL_INTERVAL)
    assert dropped.next().do is Do.POLL
    dropped.polled(SUCCEEDED)
    assert dropped.next().do is Do.FETCH_LOG


def test_a_stream_that_stays_open_after_the_end_is_drained_for_a_while_then_the_log_is_read_once():
    clock = Clock()
    watch = make(clock)
    opened(watch)
    watch.next()
    watch.polled(SUCCEEDED)
    step = watch.next()
    assert step.do is Do.READ_STREAM and step.seconds == watch_module.DRAIN_S
    clock.advance(step.seconds)
    assert watch.next().do is Do.FETCH_LOG
    assert watch.next().do is Do.RETURN  # once, whatever the read gave


def test_without_a_stream_the_log_comes_with_each_poll_until_it_is_big_then_once_at_the_end():
    clock = Clock()
    watch = make(clock, poll_interval=5.0)
    assert watch.next().do is Do.OPEN_STREAM
    watch.stream_refused()  # a proxy without websockets
    assert watch.polling
    for size in (100, 2 * LIVE_LOG_BYTES):
        assert watch.next().do is Do.POLL
        watch.polled(RUNNING)
        assert watch.next().do is Do.FETCH_LOG
        reader = LogReader(watch.follower)
        reader.feed(b'{"logs": "' + b"x" * size)
        watch.log_read(reader)
        step = watch.next()
        assert step.do is Do.SLEEP and step.seconds == 5.0
        clock.advance(5.0)
    assert watch.next().do is Do.POLL
    watch.polled(RUNNING)
    assert watch.next().do is Do.SLEEP  # over LIVE_LOG_BYTES: no whole-log read per poll any more
    clock.advance(5.0)
    watch.next()
    watch.polled(SUCCEEDED)
    assert watch.next().do is Do.FETCH_LOG  # the rest, once
    assert watch.next().do is Do.RETURN


def test_streams_that_carry_nothing_new_are_opened_again_ever_more_slowly():
    """A proxy that closes every stream right after the handshake: the reconnects back off to RECONNECT_MAX_S,
    and the requests a minute stay bounded (they were about 60 status polls and 60 log replays a minute)."""
    clock = Clock()
    watch = make(clock, poll_interval=5.0)
    opened(watch)
    watch.feed("old line\n")  # the first stream shows the log so far
    requests = []
    while clock.now < 1000.0 + 600:
        step = watch.next()
        if step.do is Do.OPEN_STREAM:
            requests.append(clock.now)
            watch.stream_opened()
            watch.feed("old line\n")  # a replay of what was shown: nothing new flowed
            watch.stream_closed(1006)
        elif step.do is Do.POLL:
            requests.append(clock.now)
            watch.polled(RUNNING)
        elif step.do is Do.READ_STREAM:
            watch.stream_closed(1006)
        else:
            clock.advance(max(step.seconds, 0.01))
    last_minute = [t for t in requests if t >= clock.now - 60]
    assert len(last_minute) <= 16, len(last_minute)  # a reconnect, its poll, the polls every 5 s
    gaps = [b - a for a, b in itertools.pairwise(requests)]
    assert max(gaps) <= RECONNECT_MAX_S + 5.0  # the job is still looked at
    # New text flowing again resets the backoff.
    watch.stream_opened()
    watch.feed("old line\nnew line\n")
    watch.stream_closed(1006)
    clock.advance(watch_module.RECONNECT_DELAY_S)
    for _ in range(3):
        if (step := watch.next()).do is Do.POLL:
            watch.polled(RUNNING)
        elif step.do is Do.OPEN_STREAM:
            break
    assert step.do is Do.OPEN_STREAM


def test_contact_lost_is_waited_for_over_the_window_with_growing_pauses_and_logged(caplog):
    clock = Clock()
    watch = running(clock, poll_interval=5.0, contact_window=120.0)
    watch.stream_closed(1006)  # the dashboard went away
    pauses = []
    while True:
        step = watch.next()
        if step.do is Do.POLL:
            watch.poll_failed(UNREACHABLE)
        elif step.do is Do.OPEN_STREAM:
            watch.stream_refused()
        elif step.do is Do.GIVE_UP:
            break
        else:
            assert step.do is Do.SLEEP, step  # no stream read, no log fetch while nobody answers
            pauses.append(step.seconds)
            clock.advance(step.seconds)
    assert isinstance(watch.error, ContactLost) and "contact window" in str(watch.error)
    assert clock.now - 1000.0 >= 120.0  # the whole window, not 7 s
    assert pauses[0] < pauses[3] <= watch_module.CONTACT_POLL_MAX_S  # growing
    assert "the job is not stopped" in caplog.text and "Still no contact" in caplog.text


def test_contact_back_within_the_window_goes_on_as_before():
    clock = Clock()
    watch = running(clock, contact_window=120.0)
    watch.stream_closed(1006)
    for _ in range(5):
        step = watch.next()
        if step.do is Do.POLL:
            watch.poll_failed(UNREACHABLE)
        clock.advance(step.seconds or 1.0)
    while (step := watch.next()).do is not Do.POLL:
        clock.advance(step.seconds or 1.0)
    watch.polled(RUNNING)
    assert watch.error is None
    assert watch.next().do is Do.OPEN_STREAM  # and the log stream again


@pytest.mark.parametrize(
    "error",
    [RayTrainAuthError("rejected", http_status=401), RayTrainClusterError("no such job", http_status=404)],
)
def test_a_cluster_that_answers_no_ends_the_watch_at_once(error):
    clock = Clock()
    watch = make(clock)
    opened(watch)
    watch.next()
    watch.poll_failed(error)
    assert watch.next().do is Do.GIVE_UP and watch.error is error


def test_a_busy_gateway_counts_as_contact_lost():
    assert watch_module.is_contact_error(RayTrainClusterError("busy", http_status=503))
    assert not watch_module.is_contact_error(RayTrainClusterError("bad request", http_status=400))


def test_every_pause_and_read_is_cut_at_the_deadline_and_the_job_is_handed_back_then():
    clock = Clock()
    watch = running(clock, poll_interval=5.0, deadline=time.time() + 12.0)
    step = watch.next()
    assert step.do is Do.READ_STREAM and step.seconds == pytest.approx(12.0, abs=0.05)  # not the 30 s backstop
    clock.advance(step.seconds)
    assert watch.next().do is Do.RETURN and watch.info is RUNNING


def test_a_message_over_the_cap_ends_streaming_and_the_log_is_read_once_at_the_end(caplog):
    clock = Clock()
    watch = running(clock)
    watch.stream_closed(MESSAGE_TOO_BIG)
    assert "read once, at the end" in caplog.text
    for _ in range(50):
        step = watch.next()
        assert step.do in (Do.POLL, Do.SLEEP)
        if step.do is Do.POLL:
            watch.polled(RUNNING)
        clock.advance(step.seconds)
    watch.polled(SUCCEEDED)
    assert watch.next().do is Do.FETCH_LOG


def test_without_a_free_stream_slot_a_slot_is_asked_for_after_each_poll():
    clock = Clock()
    watch = make(clock, poll_interval=5.0)
    assert watch.next().do is Do.OPEN_STREAM
    watch.stream_refused(no_slot=True)
    assert not watch.polling  # its log comes when a slot frees, or at the end: no whole-log read per poll
    assert watch.next().do is Do.POLL
    watch.polled(RUNNING)
    assert watch.next().do is Do.OPEN_STREAM
    watch.stream_refused(no_slot=True)
    assert watch.next().do is Do.SLEEP


def test_stopping_polls_until_the_job_ended_or_time_is_up():
    clock = Clock()
    stopping = watch_module.Stopping(timeout=2.0, clock=clock)
    assert stopping.pause("RUNNING") == watch_module.STOP_POLL_S
    assert stopping.pause("STOPPED") is None
    clock.advance(2.0)
    assert stopping.pause("RUNNING") is None
