#!/usr/bin/env python3
"""Drives `reclmis serve`'s page in headless Chromium and checks that the mask follows the note.

Starts the server on a free loopback port and ChromeDriver (W3C WebDriver, spoken here with the
standard library only), then in the page: loads the example phantom with its note, switches to
the note naming other zones, types the first note back by hand, drags the threshold, and uploads
a file through the file input. It checks that the two notes give different masks, that retyping
the first note gives its mask back exactly, that a higher threshold keeps fewer pixels, and that
no step showed an error. It writes a screenshot and a JSON record of what it saw.

    python3 bench/browser_check.py --reclmis target/release/reclmis \
        --checkpoint reclmis-demo/run --screenshot docs/serve.png --out check.json

Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian's chromium and chromium-driver).
Exit code 0 when every check holds, 1 otherwise, 2 when the browser is missing.
"""

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method, url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


class Browser:
    """A WebDriver session on ChromeDriver."""

    def __init__(self, driver_url, profile):
        self.base = driver_url
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": "/usr/bin/chromium",
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-quic",
                            "--no-first-run",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            f"--user-data-dir={profile}",
                            "--window-size=1280,900",
                        ],
                    },
                }
            }
        }
        self.session = http_json("POST", f"{self.base}/session", caps)["value"]["sessionId"]

    def call(self, method, path, body=None):
        url = f"{self.base}/session/{self.session}{path}"
        return http_json(method, url, {} if body is None and method == "POST" else body)["value"]

    def go(self, url):
        self.call("POST", "/url", {"url": url})

    def find(self, css):
        found = self.call("POST", "/element", {"using": "css selector", "value": css})
        if ELEMENT not in found:
            raise RuntimeError(f"no element {css}: {found}")
        return found[ELEMENT]

    def click(self, css):
        self.call("POST", f"/element/{self.find(css)}/click")

    def type(self, css, text):
        self.call("POST", f"/element/{self.find(css)}/value", {"text": text})

    def clear(self, css):
        self.call("POST", f"/element/{self.find(css)}/clear")

    def js(self, script, *args):
        return self.call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path):
        with open(path, "wb") as f:
            f.write(base64.b64decode(self.call("GET", "/screenshot")))

    def close(self):
        try:
            http_json("DELETE", f"{self.base}/session/{self.session}")
        except OSError:
            pass


def wait_done(browser, after, timeout=60):
    """Waits until the page finished a segmentation numbered above `after`; returns its number."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = int(browser.js("return document.getElementById('status').dataset.done"))
        if done > after:
            return done
        time.sleep(0.05)
    raise TimeoutError(f"the page did not finish a segmentation within {timeout} s")


def snapshot(browser):
    """What the page shows now: the status line, whether it is an error, the mask."""
    return browser.js(
        """
        const s = document.getElementById('status');
        const r = window.reclmis.result;
        return {
          status: s.textContent,
          error: s.classList.contains('error'),
          note: document.getElementById('note').value,
          mask: r ? r.mask.flat() : null,
          ms: r ? r.ms : null,
          shown_mask_pixels: Number(document.getElementById('overlay').dataset.maskPixels),
          words: r ? r.woi.length : 0,
        };
        """
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reclmis", required=True, help="the reclmis binary")
    ap.add_argument("--checkpoint", required=True, help="checkpoint or run folder to serve")
    ap.add_argument("--screenshot", help="where to write a PNG of the page")
    ap.add_argument("--out", help="where to write the JSON record")
    args = ap.parse_args()

    for tool in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not os.path.exists(tool):
            print(f"browser check skipped: {tool} is missing", file=sys.stderr)
            return 2

    tmp = tempfile.mkdtemp(prefix="reclmis-browser-")
    server = subprocess.Popen(
        [args.reclmis, "serve", "--checkpoint", args.checkpoint, "--addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    driver_port = free_port()
    driver = subprocess.Popen(
        ["/usr/bin/chromedriver", f"--port={driver_port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    browser = None
    checks = {}
    try:
        line = server.stdout.readline()
        if "http://" not in line:
            raise RuntimeError(f"the server did not start: {line!r}")
        base = "http://" + line.split("http://")[1].split("/")[0]
        driver_url = f"http://127.0.0.1:{driver_port}"
        for _ in range(100):
            try:
                if http_json("GET", f"{driver_url}/status")["value"]["ready"]:
                    break
            except OSError:
                time.sleep(0.1)
        browser = Browser(driver_url, os.path.join(tmp, "profile"))
        browser.go(base + "/")

        # 1. The example phantom with its own note.
        browser.click("#example")
        done = wait_done(browser, 0)
        first = snapshot(browser)
        # 2. The other note (other zones of the same image).
        browser.click("#other-note")
        done = wait_done(browser, done)
        second = snapshot(browser)
        # 3. The first note typed back by hand (debounced re-segmentation).
        browser.clear("#note")
        browser.type("#note", first["note"])
        done = wait_done(browser, done)
        retyped = snapshot(browser)
        if args.screenshot:
            browser.screenshot(args.screenshot)
        # 4. A higher threshold, drawn in the page without a new request.
        browser.js(
            "const t = document.getElementById('threshold'); t.value = '0.9';"
            "t.dispatchEvent(new Event('input'));"
        )
        strict = snapshot(browser)
        # 5. A file through the file input: the example image written to disk.
        example = http_json("GET", base + "/api/example")
        png = os.path.join(tmp, "phantom.png")
        with open(png, "wb") as f:
            f.write(base64.b64decode(example["image"].split(",", 1)[1]))
        browser.type("#file", png)
        done = wait_done(browser, done)
        uploaded = snapshot(browser)

        differing = sum(a != b for a, b in zip(first["mask"], second["mask"]))
        checks = {
            "no_errors": not any(s["error"] for s in (first, second, retyped, uploaded)),
            "two_notes_give_different_masks": differing > 0,
            "retyped_note_gives_its_mask_back": retyped["mask"] == first["mask"],
            "higher_threshold_keeps_fewer_pixels": strict["shown_mask_pixels"]
            <= retyped["shown_mask_pixels"],
            "file_input_segments": uploaded["mask"] is not None and not uploaded["error"],
        }
        record = {
            "page": base + "/",
            "notes": [first["note"], second["note"]],
            "mask_pixels": [sum(first["mask"]), sum(second["mask"])],
            "pixels_that_differ": differing,
            "model_ms": [first["ms"], second["ms"], retyped["ms"]],
            "status_lines": [first["status"], second["status"], retyped["status"]],
            "shown_mask_pixels_at_0.5_and_0.9": [
                retyped["shown_mask_pixels"],
                strict["shown_mask_pixels"],
            ],
            "checks": checks,
        }
        text = json.dumps(record, indent=2)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
    finally:
        if browser:
            browser.close()
        for proc in (driver, server):
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    failed = [k for k, ok in checks.items() if not ok]
    if failed or not checks:
        print(f"browser check FAILED: {failed}", file=sys.stderr)
        return 1
    print("browser check passed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
