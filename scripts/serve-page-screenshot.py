"""docs/serve-page.png: the web page of `dkdm serve` with the real teacher and student, in headless Chromium.

usage: python scripts/serve-page-screenshot.py STUDENT_FOLDER [OUT.png]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_serve_browser import drive_page  # noqa: E402

from dkdm.bench.serve import free_port, start_server  # noqa: E402

student, out = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "docs/serve-page.png")
port = free_port()
proc = start_server(["teacher=builtin:digits", f"student={student}"], port, ["--threads", "2"])
try:
    shown = drive_page(f"http://127.0.0.1:{port}/", out, steps=25, n=8)
    for name, panel in shown.items():
        print(name, panel["images"], "images;", panel["latency"])
finally:
    proc.terminate()
    proc.wait(10)
