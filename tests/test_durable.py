"""keel.core.durable: what an append acknowledged is on disk, even after the writer is killed."""
from __future__ import annotations

import signal
import subprocess
import sys

from keel.core import durable


def test_appends_keep_every_record_in_order(tmp_path):
    path = tmp_path / "log.jsonl"
    for n in range(3):
        durable.append(path, f'{{"n": {n}}}\n'.encode())
    assert path.read_bytes().splitlines() == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']


def test_an_append_that_returned_survives_a_kill_9_of_its_writer(tmp_path):
    path = tmp_path / "log.jsonl"
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from keel.core import durable\n"
         f"durable.append(Path({str(path)!r}), b'acknowledged\\n')\n"
         "print('appended', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "appended"
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"acknowledged\n"
