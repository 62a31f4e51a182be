"""Ray's local processes die with the command that started them, even when it is SIGKILLed.

`ray.shutdown()` stops a local Ray on every normal exit, Ctrl-C and error (`cluster.session`). A SIGKILL
(the OOM killer, `kill -9`, a scheduler's hard timeout) runs no Python at all, and Ray's agents then
linger for a minute or more. So a local start also starts this watchdog in its own session: it notes
the driver's descendants (gcs_server, raylet, agents, workers) every half second and, once the driver is
gone, terminates the ones it noted (matched on pid and start time, so a reused pid is never touched).

    python -m latentstore.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5
GRACE_S = 2.0


def start(driver_pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog for `driver_pid` (default: this process), detached from its terminal and group."""
    return subprocess.Popen([sys.executable, "-m", "latentstore.reaper", str(driver_pid or os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def watch(driver_pid: int) -> int:
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return 0
    me = os.getpid()
    noted: dict[int, float] = {}
    while True:
        try:
            if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
                break
            for child in driver.children(recursive=True):
                if child.pid != me:
                    try:
                        noted[child.pid] = child.create_time()
                    except psutil.Error:
                        pass
        except psutil.Error:
            break
        time.sleep(POLL_S)
    alive = []
    for pid, created in noted.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:
                proc.send_signal(signal.SIGTERM)
                alive.append(proc)
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=GRACE_S)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1])))
