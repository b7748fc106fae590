"""Run a command, relaying stdin/stdout, and copy every byte it writes to stdout into a file.

Usage: python stdout_tap.py TAP_FILE COMMAND [ARGS...]. Lets a test talk to the stdio server
through the SDK's client while keeping a byte-exact record of what the server put on stdout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading


def main() -> int:
    tap_path, *command = sys.argv[1:]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    child_stdin, child_stdout = child.stdin, child.stdout

    def pump_in() -> None:
        while chunk := os.read(sys.stdin.fileno(), 65536):
            child_stdin.write(chunk)
            child_stdin.flush()
        child_stdin.close()

    threading.Thread(target=pump_in, daemon=True).start()
    with open(tap_path, "wb") as tap:
        while chunk := os.read(child_stdout.fileno(), 65536):
            tap.write(chunk)
            tap.flush()
            os.write(sys.stdout.fileno(), chunk)
    return child.wait()


if __name__ == "__main__":
    raise SystemExit(main())
