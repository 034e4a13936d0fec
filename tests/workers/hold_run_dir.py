"""Hold a run directory as a job does (runlock.hold) until stdin closes.

Prints "holding PID" once held; refused, prints the one error line the CLI prints and
exits 2, as `hvd-dqn train` does.

Usage: hold_run_dir.py RUN_DIR [STALE_AFTER BEAT_EVERY]
"""

import sys
from pathlib import Path

from hvd_dqn import runlock
from hvd_dqn.config import ConfigError

timing = [float(x) for x in sys.argv[2:4]]
try:
    lock = runlock.hold(Path(sys.argv[1]), *timing)
except ConfigError as exc:
    print(f"hvd-dqn: error: {exc}", file=sys.stderr, flush=True)
    sys.exit(2)
with lock:
    print(f"holding {lock.holder['pid']}", flush=True)
    sys.stdin.read()  # until the test closes it
print("released", flush=True)
