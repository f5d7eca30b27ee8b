"""A real headless Chromium for the tests, driven through Playwright.

The browser is Debian's ``chromium`` package (``/usr/bin/chromium``), or the
executable named by the ``CHROMIUM`` environment variable. Playwright comes
from PyPI (the ``tests`` extra) with its own Node.js driver inside the wheel,
so nothing is downloaded when a test runs: ``playwright install`` is never
needed. A missing browser or package fails the test with what to install;
it is never skipped: CI installs both.

Use :func:`browser_page` in a fixture::

    @pytest.fixture
    def page() -> t.Iterator[Page]:
        with browser_page() as page:
            yield page

After the browser closes, the helper checks in ``/proc`` that none of its
processes is left running, and kills any that is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import typing as t
from pathlib import Path

import pytest

from tests.servers import wait_for

if t.TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = ["browser_page", "chromium_executable", "screenshot"]

DEBIAN_CHROMIUM = "/usr/bin/chromium"

INSTALL_CHROMIUM = (
    "Install Debian's Chromium (as root: apt-get update && apt-get install -y"
    " --no-install-recommends chromium), or set CHROMIUM to a Chromium executable."
)

INSTALL_PLAYWRIGHT = (
    "Install the test dependencies: pip install -e '.[tests]' (Playwright's own"
    " browser download, 'playwright install', is not needed: the tests use Debian's Chromium)."
)

#: Passed to Chromium on top of Playwright's own flags. Playwright adds the
#: first two already (unless asked for the sandbox); they are spelled out so
#: that the reasons are written down here.
CHROMIUM_ARGS = (
    # Chromium refuses to start as root with its sandbox, and CI runs as root.
    # The tests load only their own pages from 127.0.0.1.
    "--no-sandbox",
    # Docker's default /dev/shm is 64 MiB, too small for Chromium: shared
    # memory goes to /tmp instead. (Debian's wrapper script means to add this
    # on small /dev/shm, but its check breaks where findmnt prints two lines.)
    "--disable-dev-shm-usage",
    # There is no GPU: render in software without probing for one.
    "--disable-gpu",
)

#: Set in the browser's environment to the profile folder. Chromium's own
#: processes carry ``--user-data-dir`` on their command lines, but not its
#: crash handler, which keeps the environment instead.
_MARKER = "FLASK_BGTASKS_TEST_BROWSER"


def chromium_executable() -> str:
    """The Chromium to launch: ``$CHROMIUM``, else ``chromium`` on the
    ``PATH``, else Debian's ``/usr/bin/chromium``; fail the test if none is.
    """
    configured = os.environ.get("CHROMIUM")
    if configured:
        if not os.access(configured, os.X_OK):
            message = f"CHROMIUM={configured} is not an executable file. {INSTALL_CHROMIUM}"
            pytest.fail(message, pytrace=False)
        return configured
    found = shutil.which("chromium")
    if found:
        return found
    if os.access(DEBIAN_CHROMIUM, os.X_OK):
        return DEBIAN_CHROMIUM
    pytest.fail(f"Chromium was not found. {INSTALL_CHROMIUM}", pytrace=False)


def browser_processes(profile: str) -> list[int]:
    """The live processes of the browser that uses the ``profile`` folder.

    A zombie has neither command line nor environment left, so it does not
    count: it has exited and only waits for its parent (or init) to reap it.
    """
    argument = f" --user-data-dir={profile} ".encode()
    variable = f"{_MARKER}={profile}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Chromium's child processes rewrite their command line as one
            # string with spaces (as ``ps`` shows it) instead of NUL-separated.
            cmdline = b" %s " % (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or another user's
            continue
        if argument in cmdline or variable in environ:
            pids.append(int(entry.name))
    return pids


def _kill_leftovers(profile: str, timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for the browser's processes to exit;
    kill and return those that did not."""
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not browser_processes(profile), timeout, "the browser's processes to exit")
    leftovers = browser_processes(profile)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return leftovers


@contextlib.contextmanager
def browser_page(
    *,
    timeout: float = 10,
    launch_timeout: float = 30,
    viewport: tuple[int, int] = (1024, 768),
) -> t.Iterator[Page]:
    """Launch headless Chromium with a fresh profile and yield its page;
    close the browser and check that its processes are gone after.

    :param timeout: Seconds that the page's actions and waits take at most
        (Playwright's ``expect`` has its own timeout: pass ``timeout=`` to it).
    :param launch_timeout: Seconds that Chromium may take to start.
    :param viewport: Width and height of the page in CSS pixels.
    :raises AssertionError: The browser left processes running after it
        closed (they are killed first).
    """
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.fail(f"Playwright is not installed. {INSTALL_PLAYWRIGHT}", pytrace=False)
    executable = chromium_executable()
    width, height = viewport
    with tempfile.TemporaryDirectory(prefix="test-browser-") as profile:
        try:
            with sync_playwright() as playwright:
                try:
                    # A persistent context, for a profile folder of our own
                    # to find the browser's processes by.
                    context = playwright.chromium.launch_persistent_context(
                        profile,
                        executable_path=executable,
                        headless=True,
                        args=list(CHROMIUM_ARGS),
                        env={**os.environ, _MARKER: profile},
                        timeout=launch_timeout * 1000,
                        viewport={"width": width, "height": height},
                    )
                except Error as error:
                    message = f"Chromium ({executable}) did not start: {error}\n{INSTALL_CHROMIUM}"
                    pytest.fail(message, pytrace=False)
                try:
                    context.set_default_timeout(timeout * 1000)
                    yield context.pages[0] if context.pages else context.new_page()
                finally:
                    context.close()
        finally:
            # Also when the test failed: no browser outlives its test.
            leftovers = _kill_leftovers(profile, timeout=10)
    assert not leftovers, (
        f"The browser left processes running after closing (now killed): {leftovers}"
    )


def screenshot(page: Page, path: str | os.PathLike[str], *, full_page: bool = True) -> Path:
    """Save a PNG of ``page`` at ``path`` (parent folders are made) and
    return the path, to look at or to attach to a failure report."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=target, full_page=full_page)
    return target
