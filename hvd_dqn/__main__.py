"""`hvd-dqn` and `python -m hvd_dqn`: the command line (cli.py), with the stop signals of
a `train` blocked from the process's first moment.

A batch system may stop a job while its ranks are still starting (Python and TensorFlow
take seconds to load). Blocked, a SIGTERM, SIGUSR1 or SIGINT stays pending until
interrupts.py's watch thread takes it; the run then stops at its first vote with a
checkpoint and exit 75, instead of dying of the signal (exit 143) while it loads.
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    if sys.argv[1:2] == ["train"]:
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT))
    from hvd_dqn.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
