"""A headless Chromium for tests, from PyPI: Qt WebEngine (PySide6-WebEngine), offscreen, in a child process.

`render(page)` loads an HTML file from disk, waits until the page's scripts have run, and returns the DOM as
`chromium --dump-dom` prints it; with `screenshot=` it also saves the viewport as a PNG. Only local requests
(file:, data:, blob:) are let through, so a page can never reach the network. `drive(url, steps)` loads a page of a
test server on 127.0.0.1 (then requests to that host and port are let through too) and acts on it as a user does:
real key presses sent to the view, clicks, each step waiting for a JS condition. Run as a script, this file is the
child.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from PySide6.QtGui import QPixmap
    from PySide6.QtWebEngineCore import QWebEnginePage, QWebEngineUrlRequestInterceptor
    from PySide6.QtWebEngineWidgets import QWebEngineView
    from PySide6.QtWidgets import QApplication

ENGINE = "PySide6.QtWebEngineWidgets"
INSTALL_HINT = "the test extra brings it: pip install -e \".[test]\" (package PySide6-WebEngine)"
# Offscreen, no GPU, no sandbox (tests may run as root), and none of Chromium's background requests.
CHROMIUM_FLAGS = ("--disable-gpu --no-sandbox --disable-quic --no-first-run --disable-background-networking "
                  "--disable-component-update --disable-sync")
ENV = {"QT_QPA_PLATFORM": "offscreen", "QT_QUICK_BACKEND": "software", "QTWEBENGINE_DISABLE_SANDBOX": "1",
       "QTWEBENGINE_CHROMIUM_FLAGS": CHROMIUM_FLAGS}
LOCAL_SCHEMES = {"file", "data", "blob", "about", "qrc"}
LOADED = "document.readyState === 'complete'"
LOOPBACK = "127.0.0.1"
PAINT_WAIT = 30  # seconds a screenshot waits for Chromium's first painted frame


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its package is missing
        return False


def render(page: Path | str, *, until: str = LOADED, size: tuple[int, int] = (1400, 5000),
           screenshot: Path | None = None, timeout: float = 120, steps: list[dict] | None = None) -> str:
    """The DOM of `page` once the JS expression `until` is true (after the load event by default), and after
    `steps` if any (see `drive`)."""
    assert _installed(ENGINE), f"Qt WebEngine is missing: {INSTALL_HINT}"
    with tempfile.TemporaryDirectory(prefix="browser-") as scratch:
        dom = Path(scratch) / "dom.html"
        command = [sys.executable, __file__, str(page), "--dom", str(dom), "--until", until,
                   "--size", f"{size[0]}x{size[1]}", "--timeout", str(timeout), "--steps", json.dumps(steps or [])]
        if screenshot is not None:
            command += ["--screenshot", str(screenshot)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 30, check=False,
                                env={**os.environ, "HOME": scratch})
        assert result.returncode == 0, f"the browser failed on {page}:\n{result.stderr[-3000:]}"
        return dom.read_text(encoding="utf-8")


def drive(url: str, steps: list[dict], *, until: str = LOADED, timeout: float = 120) -> str:
    """Load `url` (a page on 127.0.0.1), then for each step press its `keys` (one key press a character, sent to
    the view as a user's typing is) and/or `click` the element its CSS selector names, and wait until its JS
    expression `until` is true; the DOM at the end."""
    assert urlsplit(url).hostname == LOOPBACK, f"only pages on {LOOPBACK}: {url}"
    return render(url, until=until, steps=steps, timeout=timeout, size=(1400, 1000))


# The child: everything below runs in the process that holds Qt.

def _wait(app: QApplication, done: Callable[[], object], timeout: float, what: str, every: float = 0.01) -> None:
    """Run Qt's event loop until `done()` (asked `every` seconds) or the deadline.

    Through a QEventLoop and a timer, not `app.processEvents()`: each call of that costs PySide 6.12 a reference
    to None, and a page watched for minutes (the review app's apply) used them all up ("none_dealloc")."""
    from PySide6.QtCore import QEventLoop, QTimer

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not get to {what!r} within {timeout:.0f} s")
        loop = QEventLoop()
        QTimer.singleShot(max(1, int(every * 1000)), loop.quit)
        loop.exec()


def _evaluate(app: QApplication, page: QWebEnginePage, script: str, timeout: float) -> object:
    """The value of a JS expression, evaluated in an isolated world (the page's scripts cannot redefine it)."""
    from PySide6.QtWebEngineCore import QWebEngineScript

    box: list = []
    page.runJavaScript(script, QWebEngineScript.ScriptWorldId.ApplicationWorld, box.append)
    _wait(app, lambda: box, timeout, script)
    return box[0]


def _local_only(server: str | None) -> QWebEngineUrlRequestInterceptor:
    """A request interceptor that blocks anything but local schemes and the test server's `host:port`, naming
    each on stderr."""
    from PySide6.QtWebEngineCore import QWebEngineUrlRequestInterceptor

    class LocalOnly(QWebEngineUrlRequestInterceptor):
        def interceptRequest(self, info) -> None:  # Qt's name and signature
            url = info.requestUrl()
            if url.scheme() not in LOCAL_SCHEMES and not (server and url.scheme() == "http"
                                                          and f"{url.host()}:{url.port()}" == server):
                print(f"blocked: {url.toString()}", file=sys.stderr)
                info.block(True)

    return LocalOnly()


def _show(app: QApplication, view: QWebEngineView, args: argparse.Namespace) -> None:
    """Load the page in the offscreen view, then write its DOM and maybe a screenshot."""
    from PySide6.QtCore import QUrl

    page = view.page()
    loaded: list[bool] = []
    crashed: list[tuple] = []
    page.loadFinished.connect(loaded.append)
    page.renderProcessTerminated.connect(lambda status, code: crashed.append((status, code)))
    page.load(QUrl(args.page) if _server(args.page) else QUrl.fromLocalFile(str(Path(args.page).resolve())))
    _wait(app, lambda: loaded or crashed, args.timeout, "loadFinished")
    assert loaded == [True] and not crashed, f"the page did not load: {args.page} {crashed}"
    _wait(app, lambda: _evaluate(app, page, f"!!({args.until})", args.timeout), args.timeout, args.until)
    for step in json.loads(args.steps):
        _act(app, view, step, args.timeout)
    dom = _evaluate(app, page, "document.documentElement.outerHTML", args.timeout)
    Path(args.dom).write_text(dom, encoding="utf-8")
    if args.screenshot:  # two animation frames: the last layout has been painted
        _evaluate(app, page, "requestAnimationFrame(() => requestAnimationFrame(() => window.painted = true))",
                  args.timeout)
        _wait(app, lambda: _evaluate(app, page, "window.painted === true", args.timeout), args.timeout, "paint")
        assert _grab_painted(app, view, PAINT_WAIT).save(args.screenshot, "PNG"), f"cannot write {args.screenshot}"
    assert not crashed, f"the page's renderer ended: {crashed}"


def _grab_painted(app: QApplication, view: QWebEngineView, patience: float) -> QPixmap:
    """The view as painted: on a loaded machine Chromium's compositor can hand Qt its first frame after the
    page's animation frames have run, and a grab before that is the background colour alone. So grab again
    until the picture holds more than one colour, for `patience` seconds; a page that stays blank is then
    saved as it is, for the test to judge."""
    import numpy as np
    from PySide6.QtGui import QImage

    deadline = time.monotonic() + patience
    while True:
        picture = view.grab()
        image = picture.toImage().convertToFormat(QImage.Format.Format_RGB32)  # a pixel is one uint32
        pixels = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.sizeInBytes()).view(np.uint32)
        if (pixels != pixels[0]).any() or time.monotonic() > deadline:
            return picture
        pause_end = time.monotonic() + 0.2  # Qt's events run meanwhile: the compositor's frame can arrive
        _wait(app, lambda: time.monotonic() >= pause_end, 1, "a pause")


def _server(page: str) -> str | None:
    """`host:port` of a page on the loopback test server; None for a file."""
    parts = urlsplit(page)
    return f"{parts.hostname}:{parts.port}" if parts.scheme == "http" and parts.hostname == LOOPBACK else None


def _act(app: QApplication, view: QWebEngineView, step: dict, timeout: float) -> None:
    """One step: key presses as a user types them (to the widget Chromium renders into), a click, then a wait."""
    from PySide6.QtTest import QTest

    page = view.page()
    if step.get("click"):
        assert _evaluate(app, page, f"!!document.querySelector({json.dumps(step['click'])})", timeout), step
        _evaluate(app, page, f"document.querySelector({json.dumps(step['click'])}).click() || true", timeout)
    for key in step.get("keys", ""):
        view.focusProxy().setFocus()
        QTest.keyClick(view.focusProxy(), key)
    until = step.get("until", "true")
    # Asked 4 times a second: each runJavaScript costs PySide 6.12 a reference to None too.
    _wait(app, lambda: _evaluate(app, page, f"!!({until})", timeout), timeout, until, every=0.25)


def _child(args: argparse.Namespace) -> None:
    os.environ.update(ENV)  # before Qt starts
    try:
        import shiboken6
        from PySide6.QtWebEngineCore import QWebEnginePage, QWebEngineProfile, QWebEngineSettings
        from PySide6.QtWebEngineWidgets import QWebEngineView
        from PySide6.QtWidgets import QApplication
    except ImportError as error:  # the package, or a system library it links against
        sys.exit(f"Qt WebEngine does not load ({error}); {INSTALL_HINT}")
    app = QApplication([sys.argv[0]])
    profile = QWebEngineProfile()  # off the record: no cache or cookies on disk
    interceptor = _local_only(_server(args.page))
    profile.setUrlRequestInterceptor(interceptor)
    profile.settings().setAttribute(QWebEngineSettings.WebAttribute.ShowScrollBars, False)  # as --hide-scrollbars
    view = QWebEngineView()
    view.setPage(QWebEnginePage(profile, view))  # the view owns its page
    view.resize(*args.size)
    view.show()
    try:
        _show(app, view, args)
    finally:
        shiboken6.delete(view)  # the page goes before the profile, as Qt asks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("page")
    parser.add_argument("--dom", required=True)
    parser.add_argument("--until", default=LOADED)
    parser.add_argument("--size", type=lambda s: tuple(int(n) for n in s.split("x")), default=(1400, 5000))
    parser.add_argument("--screenshot")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--steps", default="[]", help="JSON: [{keys, click, until}, ...] (see drive)")
    _child(parser.parse_args())


if __name__ == "__main__":
    main()
