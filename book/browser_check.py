"""Open the built book in headless Chromium, offline, and check what a reader would see.

    .venv/bin/python book/browser_check.py [build/book/html] [--shots build/book/screenshots]

For every page it reports: JavaScript errors (uncaught exceptions, ``console.error``, browser log errors),
any request that is not a local file (the browser also runs with the network switched off), maths that was
not typeset (a ``.math`` element without MathJax output, or raw ``\\(`` / ``$$`` left in the text), images
that did not load, widgets without rendered output or without their static fallback figure, and
animations that did not load all their frames (a player must also step when its "next" button is pressed).
It saves a full-page screenshot of each page. ``check_page_without_javascript`` reloads a page with
scripts off, to see that the fallbacks and GIF animations still show.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so no port, websocket library or driver is needed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = [  # from ../shared/DESIGN.md, plus a dead proxy so that nothing can leave the machine
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
    "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--allow-file-access-from-files",
    "--hide-scrollbars", "--mute-audio",
]
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome-error:")

# Evaluated in the page once it has loaded; returns a JSON-able report of what is wrong.
PAGE_REPORT_JS = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const deadline = Date.now() + WAIT_MS;
  const rendered = s => { const p = s.previousElementSibling;
    return !!p && p.tagName !== 'SCRIPT' && p.querySelector('.jupyter-widgets') !== null
      && p.getBoundingClientRect().height > 0 && !p.textContent.includes('Error displaying widget'); };
  while (views.some(v => !rendered(v)) && Date.now() < deadline) { await new Promise(r => setTimeout(r, 100)); }
  // An animation player gets its first frame from a script that runs after a timeout: wait for it.
  const anims = [...document.querySelectorAll('.book-animation')];
  const animImg = a => a.querySelector('img');
  while (anims.some(a => !animImg(a) || !animImg(a).getAttribute('src')) && Date.now() < deadline) {
    await new Promise(r => setTimeout(r, 100)); }
  const maths = [...document.querySelectorAll('.math')];
  const text = document.querySelector('main') ? document.querySelector('main').innerText : document.body.innerText;
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  const loaded = i => !!i && i.complete && i.naturalWidth > 0;
  const animations = [];
  for (const a of anims) {
    const img = animImg(a), info = {kind: a.dataset.kind, declared: +a.dataset.frames, loaded: loaded(img)};
    if (a.dataset.kind === 'player') {  // count the frames on its slider, then press "next frame"
      const slider = a.querySelector('input[type=range]'), next = a.querySelector('button[title="Next frame"]');
      info.frames = slider ? +slider.max + 1 : 0;
      const before = img && img.src;
      if (next) { next.click(); await new Promise(r => setTimeout(r, 300)); }
      info.stepped = !!next && !!img && img.src !== before && loaded(img);
    } else if (window.ImageDecoder && img) {  // count the frames of the animated GIF
      const dec = new ImageDecoder({data: await (await fetch(img.src)).arrayBuffer(), type: 'image/gif'});
      await dec.tracks.ready;
      info.frames = dec.tracks.selectedTrack.frameCount;
    }
    animations.push(info);
  }
  const fallbacks = [...document.querySelectorAll('figure.widget-fallback')];
  const outputOf = v => v.closest('.cell_output') || v.parentElement;
  return JSON.stringify({
    title: document.title,
    animations,
    fallbacks: fallbacks.length,
    brokenFallbacks: fallbacks.filter(f => !loaded(f.querySelector('img'))).length,
    widgetsWithoutFallback: views.filter(v => !outputOf(v).querySelector('figure.widget-fallback')).length,
    maths: maths.length,
    untypeset: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 60)),
    rawTex: ['\\(', '\\[', '$$'].filter(t => text.includes(t)),
    images: imgs.length,
    brokenImages: imgs.filter(i => !i.complete || i.naturalWidth === 0)
                      .map(i => (i.getAttribute('src') || '').slice(0, 80)),
    widgets: views.length,
    unrenderedWidgets: views.filter(v => !rendered(v)).length,
    height: Math.min(document.documentElement.scrollHeight, 16000),
  });
})()
"""


class Chromium:
    """A headless Chromium spoken to over ``--remote-debugging-pipe``."""

    def __init__(self, binary: str):
        self.profile = tempfile.mkdtemp(prefix="book-chromium-")
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds():  # in the child: the pipe ends become fds 3 (commands in) and 4 (replies out)
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._id, self.events = b"", 0, []

    def _read_message(self, timeout: float) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._r], [], [], timeout)
            if not ready:
                raise TimeoutError(f"Chromium sent nothing for {timeout} s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe (did it crash?)")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            reply = self._read_message(max(0.1, end - time.monotonic()))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        end = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._read_message(max(0.1, end - time.monotonic()))
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        shutil.rmtree(self.profile, ignore_errors=True)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def _problems(events: list[dict]) -> tuple[list[str], list[str]]:
    """JavaScript errors and non-local requests among the collected DevTools events."""
    errors, remote = [], []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            errors.append(f"uncaught: {d.get('exception', {}).get('description', d.get('text'))}"[:300])
        elif m == "Runtime.consoleAPICalled" and p.get("type") == "error":
            errors.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(f"log: {p['entry']['text']} ({p['entry'].get('url', '')})"[:300])
        elif m == "Network.requestWillBeSent" and not p["request"]["url"].startswith(LOCAL_SCHEMES):
            remote.append(p["request"]["url"])
    return errors, remote


def check_page(chrome: Chromium, html: Path, shots: Path | None, width: int = 1280, wait_s: float = 15) -> dict:
    """Load one page in a fresh tab and return its report (see PAGE_REPORT_JS) plus errors and requests;
    widgets and animations get ``wait_s`` seconds to render."""
    target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    s = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        chrome.send(f"{domain}.enable", session=s)
    chrome.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                      "uploadThroughput": -1}, session=s)
    chrome.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                        "mobile": False}, session=s)
    chrome.events.clear()
    chrome.send("Page.navigate", {"url": html.resolve().as_uri()}, session=s)
    chrome.wait_for("Page.loadEventFired")
    script = PAGE_REPORT_JS.replace("WAIT_MS", str(int(wait_s * 1000)))
    res = chrome.send("Runtime.evaluate", {"expression": script, "awaitPromise": True,
                                           "returnByValue": True}, session=s, timeout=60)
    if "exceptionDetails" in res:
        raise RuntimeError(f"the page check script failed on {html.name}: {res['exceptionDetails']}")
    report = json.loads(res["result"]["value"])
    report["page"] = html.name
    report["jsErrors"], report["remoteRequests"] = _problems(chrome.events)
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
        clip = {"x": 0, "y": 0, "width": width, "height": report["height"], "scale": 1}
        png = chrome.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True},
                          session=s)["data"]
        report["screenshot"] = str(shots / (html.stem + ".png"))
        Path(report["screenshot"]).write_bytes(base64.b64decode(png))
    chrome.send("Target.closeTarget", {"targetId": target})
    return report


CLICK_JS = r"""
(async (label) => {
  const deadline = Date.now() + 15000;
  const find = () => [...document.querySelectorAll('.jupyter-widgets button')]
                       .find(b => b.textContent.trim() === label);
  while (!find() && Date.now() < deadline) { await new Promise(r => setTimeout(r, 100)); }
  const shown = () => [...document.querySelectorAll('.widget-html img')].filter(i => i.offsetParent !== null)
                        .map(i => i.alt);
  const before = shown();
  if (!find()) { return JSON.stringify({before, after: null}); }
  find().click();
  await new Promise(r => setTimeout(r, 300));
  return JSON.stringify({before, after: shown()});
})
"""


def click_widget_button(chrome: Chromium, html: Path, label: str) -> tuple[list[str], list[str] | None]:
    """Click the widget button labelled ``label`` on a page, with no kernel behind it, and return the alt
    texts of the frames shown before and after (``after`` is None if there is no such button)."""
    target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    s = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    chrome.send("Page.enable", session=s)
    chrome.send("Page.navigate", {"url": html.resolve().as_uri()}, session=s)
    chrome.wait_for("Page.loadEventFired")
    res = chrome.send("Runtime.evaluate", {"expression": f"{CLICK_JS}({json.dumps(label)})", "awaitPromise": True,
                                           "returnByValue": True}, session=s, timeout=60)
    chrome.send("Target.closeTarget", {"targetId": target})
    out = json.loads(res["result"]["value"])
    return out["before"], out["after"]


NO_JS_JS = r"""
JSON.stringify({
  fallbacks: [...document.querySelectorAll('figure.widget-fallback img')]
               .map(i => i.complete && i.naturalWidth > 0 && i.offsetParent !== null),
  gifs: [...document.querySelectorAll('.book-animation[data-kind="gif"] img')]
          .map(i => i.complete && i.naturalWidth > 0 && i.offsetParent !== null),
  stills: [...document.querySelectorAll('.book-animation[data-kind="player"] noscript')].length,
  renderedWidgets: document.querySelectorAll('.jupyter-widgets').length,
})
"""


def check_page_without_javascript(chrome: Chromium, html: Path) -> dict:
    """Load a page with JavaScript switched off and report what a reader still sees: for each static
    widget fallback and each GIF animation, whether its image loaded and is visible; and how many widgets
    rendered (none can, with no script)."""
    target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    s = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    chrome.send("Page.enable", session=s)
    chrome.send("Emulation.setScriptExecutionDisabled", {"value": True}, session=s)
    chrome.send("Page.navigate", {"url": html.resolve().as_uri()}, session=s)
    chrome.wait_for("Page.loadEventFired")
    res = chrome.send("Runtime.evaluate", {"expression": NO_JS_JS, "returnByValue": True}, session=s)
    chrome.send("Target.closeTarget", {"targetId": target})
    if "exceptionDetails" in res:
        raise RuntimeError(f"the no-JavaScript check failed on {html.name}: {res['exceptionDetails']}")
    return json.loads(res["result"]["value"])


def failures(report: dict) -> list[str]:
    """What is wrong with one page's report, in words (empty = the page is fine)."""
    out = [f"JavaScript error: {e}" for e in report["jsErrors"]]
    out += [f"remote request (the book must work offline): {u}" for u in report["remoteRequests"]]
    out += [f"maths not typeset: {m!r}" for m in report["untypeset"]]
    out += [f"raw TeX delimiter {t!r} left in the page text" for t in report["rawTex"]]
    out += [f"image did not load: {src}" for src in report["brokenImages"]]
    if report["unrenderedWidgets"]:
        out.append(f"{report['unrenderedWidgets']} of {report['widgets']} widgets have no rendered output")
    if report["widgetsWithoutFallback"]:
        out.append(f"{report['widgetsWithoutFallback']} widgets have no static fallback figure in their output "
                   "(show them with bookhelpers.frame_slider / show_with_fallback)")
    if report["brokenFallbacks"]:
        out.append(f"{report['brokenFallbacks']} static fallback figures did not load")
    if "noJs" in report:  # what a reader with JavaScript off sees
        nojs = report["noJs"]
        if len(nojs["fallbacks"]) != report["fallbacks"] or not all(nojs["fallbacks"]):
            out.append(f"with JavaScript off, only {sum(nojs['fallbacks'])} of {report['fallbacks']} static "
                       "fallback figures show")
        if not all(nojs["gifs"]):
            out.append("with JavaScript off, a GIF animation does not show")
    for n, a in enumerate(report["animations"]):
        name = f"animation {n} ({a['kind']})"
        if not a["loaded"]:
            out.append(f"{name}: its image did not load")
        if a.get("frames") is not None and a["frames"] != a["declared"]:
            out.append(f"{name}: the page shows {a['frames']} frames, the book made {a['declared']}")
        if a["kind"] == "player" and not a.get("stepped"):
            out.append(f"{name}: pressing 'Next frame' did not show another loaded frame")
    return out


def check_book(html_dir: Path, pages: list[str], shots: Path | None, wait_s: float = 15) -> list[dict]:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found: install Debian's `chromium` (make system-deps does, as root)")
    chrome = Chromium(binary)
    try:
        reports = [check_page(chrome, html_dir / f"{p}.html", shots, wait_s=wait_s) for p in pages]
        for p, r in zip(pages, reports, strict=True):
            r["noJs"] = check_page_without_javascript(chrome, html_dir / f"{p}.html")
        return reports
    finally:
        chrome.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", nargs="?", default=str(ROOT / "build" / "book" / "html"))
    ap.add_argument("--shots", default=str(ROOT / "build" / "book" / "screenshots"))
    a = ap.parse_args(argv)
    html = Path(a.html)
    pages = sorted(p.stem for p in html.glob("*.html") if p.stem not in ("genindex", "search", "index"))
    bad = 0
    for r in check_book(html, pages, Path(a.shots)):
        f = failures(r)
        bad += bool(f)
        print(f"{r['page']:24s} maths {r['maths']:3d}  images {r['images']:2d}  widgets {r['widgets']:2d}  "
              f"fallbacks {r['fallbacks']:2d}  animations {len(r['animations']):2d}  "
              + ("OK" if not f else "FAIL\n  " + "\n  ".join(f)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
