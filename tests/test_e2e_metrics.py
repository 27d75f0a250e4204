"""Every role's HTTP endpoint in a real cell: /metrics scraped with a real HTTP client and
checked against the tasks run, the PLM's /status against `heapd status --json`, its HTML page."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from prometheus_client.parser import text_string_to_metric_families

from heapd import Client, shm
from tests import tasks_for_tests
from tests.conftest import StartCell
from tests.helpers import assert_eventually

OK, FAILING = 60, 7
SCHEDULER = [sys.executable, "-m", "heapd.scheduler"]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def authed(url: str, data: bytes | None = None) -> urllib.request.Request:
    """A request carrying the test token, as a Prometheus scrape config's bearer token."""
    token = os.environ["HEAPD_TOKEN"]
    return urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {token}"})


def scrape(address: str) -> Samples:
    """GET /metrics and parse it as Prometheus text: (name, sorted labels) -> value."""
    with urllib.request.urlopen(authed(f"http://{address}/metrics"), timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def get(address: str, path: str, token: bool = True) -> tuple[int, str, str]:
    url = f"http://{address}{path}"
    try:
        with urllib.request.urlopen(authed(url) if token else url, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:  # the error holds the response: close it
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def run_tasks(address: str, endpoints: dict[str, str] | None = None) -> None:
    """OK tasks that succeed and FAILING that raise; scrape `endpoints` while they run."""
    with Client(address) as client:
        good = client.map(tasks_for_tests.square, range(OK))
        bad = [
            client.submit(tasks_for_tests.fail_with, "ValueError", f"no {i}")
            for i in range(FAILING)
        ]
        for at in (endpoints or {}).values():  # every role answers while it works
            assert scrape(at)
        assert client.gather(good) == [i * i for i in range(OK)]
        for future in bad:
            with pytest.raises(ValueError):
                future.result(timeout=60)


@pytest.fixture
def metrics_cell(start_cell: StartCell) -> Iterator[tuple[str, dict[str, str]]]:
    cell = start_cell(workers=2, slots=2, extra_args=("--metrics-port", "0"))
    endpoints = cell.info["metrics"]
    assert set(endpoints) == {"plm", "scheduler", "register", "worker-0", "worker-1"}
    yield cell.address, endpoints


def test_every_role_counts_the_tasks_it_ran(metrics_cell: tuple[str, dict[str, str]]) -> None:
    address, endpoints = metrics_cell
    run_tasks(address, endpoints)
    n = OK + FAILING

    plm = scrape(endpoints["plm"])
    assert value(plm, "heapd_tasks_submitted_total") == n
    assert value(plm, "heapd_tasks_settled_total", state="succeeded") == OK
    assert value(plm, "heapd_tasks_settled_total", state="failed") == FAILING
    assert value(plm, "heapd_tasks_settled_total", state="cancelled") == 0
    for histogram in ("queue", "run", "end_to_end"):
        assert value(plm, f"heapd_task_{histogram}_seconds_count") == n
        assert value(plm, f"heapd_task_{histogram}_seconds_bucket", le="+Inf") == n
        assert value(plm, f"heapd_task_{histogram}_seconds_sum") > 0
    assert value(plm, "heapd_workers", state="alive") == 2
    assert value(plm, "heapd_slots") == 4
    assert value(plm, "heapd_queue_depth", band="medium") == 0
    assert value(plm, "heapd_tasks_running") == 0
    assert value(plm, "heapd_results_delivered_total") == n
    assert value(plm, "heapd_task_table_capacity") > 0
    assert value(plm, "heapd_journal_commit_seconds_count") >= 1
    assert value(plm, "process_cpu_seconds_total") > 0

    scheduler = scrape(endpoints["scheduler"])
    assert value(scheduler, "heapd_tasks_dispatched_total") == n
    assert value(scheduler, "heapd_dispatch_batch_size_sum") == n
    assert value(scheduler, "heapd_lock_hold_seconds_count") >= 1

    register = scrape(endpoints["register"])
    assert value(register, "heapd_attempts_succeeded_total") == OK
    assert value(register, "heapd_attempts_failed_total", kind="exception") == FAILING
    assert value(register, "heapd_heartbeat_results_sum") == n
    assert value(register, "heapd_fenced_results_total") == 0
    assert value(register, "heapd_heartbeats_total") >= 2

    workers = [scrape(endpoints[f"worker-{i}"]) for i in range(2)]
    finished = sum(
        value(w, "heapd_worker_tasks_finished_total", state=s)
        for w in workers
        for s in ("succeeded", "failed")
    )
    assert finished == n
    assert sum(value(w, "heapd_worker_assigned_total") for w in workers) == n
    assert all(value(w, "heapd_worker_connected") == 1 for w in workers)
    assert all(value(w, "heapd_worker_slots") == 2 for w in workers)


def test_status_json_is_what_heapd_status_prints(
    metrics_cell: tuple[str, dict[str, str]],
) -> None:
    address, endpoints = metrics_cell
    run_tasks(address)
    code, content_type, body = get(endpoints["plm"], "/status")
    assert code == 200 and content_type == "application/json"
    served = json.loads(body)
    printed = json.loads(
        subprocess.run(
            [sys.executable, "-m", "heapd", "status", "--address", address, "--json"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
    assert set(served) == set(printed)
    for doc in (served, printed):  # heartbeats move on between the two reads
        for worker in doc["workers"]:
            worker.pop("last_heartbeat")
    assert served == printed
    assert served["succeeded_total"] == OK and served["failed_total"] == FAILING


class _Cells(HTMLParser):
    """The text of every table cell, and whether the document nests properly."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self._in_cell = False
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_cell = tag == "td"
        if self._in_cell:
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_cell = False if tag == "td" else self._in_cell

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells[-1] += data


def test_status_page_names_every_worker(metrics_cell: tuple[str, dict[str, str]]) -> None:
    address, endpoints = metrics_cell
    run_tasks(address)
    # The charts need two samples of the cell (one every 2 s): wait for the second.

    def charted() -> str:
        code, content_type, body = get(endpoints["plm"], "/")
        assert code == 200 and content_type.startswith("text/html")
        assert "<svg" in body
        return body

    body = assert_eventually(charted, timeout_s=30, interval_s=0.5)
    page = _Cells()
    page.feed(body)
    page.close()
    assert "svg" in page.tags and "script" not in page.tags
    assert "http://" not in body and "https://" not in body  # self-contained: no external assets
    with Client(address) as client:
        workers = client.cluster_status().workers
    assert len(workers) == 2
    for w in workers:
        assert str(w.worker_id) in page.cells
        assert w.address in page.cells


def test_endpoint_refuses_what_it_does_not_serve(
    metrics_cell: tuple[str, dict[str, str]],
) -> None:
    _, endpoints = metrics_cell
    code, _, body = get(endpoints["plm"], "/nope")
    assert code == 404 and "/metrics" in body
    code, _, _ = get(endpoints["scheduler"], "/status")
    assert code == 404  # the cell's status is the PLM's
    for role, address in endpoints.items():  # the endpoints follow the cell's token
        for path in ("/metrics", "/status", "/"):
            code, _, body = get(address, path, token=False)
            assert code == 401 and "token" in body, (role, path)
    request = authed(f"http://{endpoints['plm']}/metrics", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    with refused.value:
        assert refused.value.code == 405


def test_metrics_are_off_unless_asked(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=1)
    assert "metrics" not in cell.info


def test_a_port_in_use_is_a_clear_error(cell_name: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with shm.Cell.create(cell_name, shm.Capacities(tasks=64, workers=4)):
            done = subprocess.run(
                [*SCHEDULER, "--cell", cell_name, "--metrics-port", str(port)],
                capture_output=True,
                text=True,
                timeout=60,
            )
    assert done.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr


def test_a_restarted_role_serves_metrics_at_the_same_address(start_cell: StartCell) -> None:
    cell = start_cell(workers=1, slots=2, extra_args=("--metrics-port", "0"))
    endpoint = cell.info["metrics"]["scheduler"]
    started = value(scrape(endpoint), "process_start_time_seconds")
    os.kill(cell.info["pids"]["scheduler"], signal.SIGKILL)

    def restarted() -> Samples:
        samples = scrape(endpoint)
        assert value(samples, "process_start_time_seconds") > started
        return samples

    def scraped_again() -> Samples:
        try:
            return restarted()
        except OSError as exc:  # refused, reset: the old process died, the new one not up yet
            raise AssertionError(f"scheduler endpoint down: {exc}") from exc

    assert_eventually(scraped_again, timeout_s=30, interval_s=0.2)
    run_tasks(cell.address)  # the restarted scheduler dispatches, and counts it
    assert value(scrape(endpoint), "heapd_tasks_dispatched_total") == OK + FAILING
