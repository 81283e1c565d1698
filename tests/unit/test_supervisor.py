"""``enrich run``: restarts with backoff, status files, clean stop, no restart for finished or misconfigured
workers (real child processes, no services)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from stack.procs import wait_until
from stack.supervisor import EXIT_CONFIG, Policy, Supervisor, last_error_of, read_status

FAST = Policy(first_backoff_s=0.05, max_backoff_s=0.2, stable_after_s=30, stop_timeout_s=5)

# Crashes on its first two runs (counted in a file), then runs until SIGTERM and exits 0 on it.
FLAKY = """
import pathlib, signal, sys, time
runs = pathlib.Path(sys.argv[1])
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
if n <= 2:
    print("starting", flush=True)
    raise RuntimeError(f"boom {n}")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
pathlib.Path(sys.argv[2]).write_text("up")
while True:
    time.sleep(0.05)
"""


def test_a_crashing_worker_is_restarted_with_its_error_recorded_and_stops_cleanly(tmp_path: Path) -> None:
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    argv = [sys.executable, str(script), str(tmp_path / "runs"), str(tmp_path / "up")]
    sup = Supervisor("flaky", ["flaky"], tmp_path, policy=FAST, argv=argv)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(sup.run()))
    thread.start()
    try:
        assert wait_until((tmp_path / "up").exists, 30)
        status = read_status(tmp_path / "workers" / "flaky.json")
        assert status["state"] == "running" and status["restarts"] == 2
        assert status["last_exit_code"] == 1
        assert status["last_error"] == "RuntimeError: boom 2"
        pid = status["pid"]
        assert pid and Path(f"/proc/{pid}").exists()
        assert "RuntimeError: boom 1" in (tmp_path / "workers" / "flaky.log").read_text()
    finally:
        sup.stop()
        thread.join(timeout=30)
    assert result == [0]
    final = read_status(tmp_path / "workers" / "flaky.json")
    assert (final["state"], final["pid"], final["last_exit_code"]) == ("stopped", None, 0)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_worker_that_finished_or_is_misconfigured_is_not_restarted(tmp_path: Path) -> None:
    for code in (0, EXIT_CONFIG):
        argv = [
            sys.executable,
            "-c",
            f"import sys; print('ERROR bad config', file=sys.stderr); sys.exit({code})",
        ]
        sup = Supervisor(f"w{code}", ["w"], tmp_path, policy=FAST, argv=argv)
        assert sup.run() == code
        status = read_status(sup.status_file)
        assert (status["state"], status["restarts"], status["last_exit_code"]) == ("stopped", 0, code)
        assert status["last_error"] == "ERROR bad config"


def test_enrich_run_forwards_sigterm_to_the_worker(tmp_path: Path) -> None:
    env = {**os.environ, "ENRICH_STATE_DIR": str(tmp_path), "ENRICH_REDIS_URL": "redis://127.0.0.1:1/0",
           "ENRICH_KAFKA_BOOTSTRAP": "127.0.0.1:1", "ENRICH_API_PORT": "0",
           "ENRICH_METRICS_PORT": "0"}  # fmt: skip
    # `rules check` finishes at once: exit 0, not restarted, the supervisor exits 0 too.
    done = subprocess.run([sys.executable, "-m", "cli.main", "run", "rules", "check"], env=env,
                          capture_output=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert read_status(tmp_path / "workers" / "rules-check.json")["state"] == "stopped"
    # The alerts worker waits for its (unreachable) broker until SIGTERM stops it cleanly.
    sup = subprocess.Popen([sys.executable, "-m", "cli.main", "run", "alerts", "run"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    status_file = tmp_path / "workers" / "alerts-run.json"
    log = tmp_path / "workers" / "alerts-run.log"
    try:  # wait until the worker runs (its start line), so SIGTERM meets its handler, not its imports
        assert wait_until(lambda: log.exists() and "alerts worker:" in log.read_text(), 30)
        child = read_status(status_file)["pid"]
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=30) == 0
    finally:
        if sup.poll() is None:
            sup.kill()
    status = read_status(status_file)
    assert (status["state"], status["restarts"], status["last_exit_code"]) == ("stopped", 0, 0)
    assert not Path(f"/proc/{child}").exists()


def test_last_error_prefers_the_exception_line() -> None:
    lines = ["INFO ok", "ERROR redis down", "Traceback (most recent call last):", '  File "x.py"',
             "KafkaWriterError: cannot produce to out", "INFO shutting down"]  # fmt: skip
    assert last_error_of(lines) == "KafkaWriterError: cannot produce to out"
    assert last_error_of(["INFO ok", "2024 ERROR x: gone"]) == "2024 ERROR x: gone"
    assert last_error_of(["fine"]) is None
