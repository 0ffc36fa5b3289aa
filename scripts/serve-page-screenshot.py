"""docs/serve-page.png: the web page of `dkdm serve` with the real teacher and student, in headless Chromium.

usage: python scripts/serve-page-screenshot.py OUT.png NAME=STUDENT_FOLDER [NAME=STUDENT_FOLDER ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_serve_browser import drive_page  # noqa: E402

from dkdm.bench.serve import free_port, start_server  # noqa: E402

out, students = sys.argv[1], sys.argv[2:]
port = free_port()
proc = start_server(["teacher=builtin:digits", *students], port, ["--threads", "1"])
try:
    shown = drive_page(f"http://127.0.0.1:{port}/", out, steps=25, n=8)
    for name, panel in shown.items():
        print(name, panel["images"], "images;", panel["latency"])
finally:
    proc.terminate()
    proc.wait(10)
