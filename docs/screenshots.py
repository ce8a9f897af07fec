"""Screenshots of report pages, taken with headless Chromium (Debian's `chromium` and `chromium-driver`).

    python docs/screenshots.py demo-report/index.html --out docs/images --width 1024
    python docs/screenshots.py eval/index.html --out docs/images --prefix evaluate-

One PNG per section of the page (``<prefix><n>-<title>.png``), each as a reader at ``--width`` pixels sees it,
and a check that no section is wider than the window (a table or figure that overflows the page). Nothing is
fetched: the pages are self-contained files.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def browser(width: int, height: int = 900):
    """A headless Chromium driven by Selenium, ``width`` CSS pixels wide."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(flag)
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    if chromium:
        options.binary_location = chromium
    driver_path = next((p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()),
                       None)
    service = Service(driver_path) if driver_path else Service()
    return webdriver.Chrome(options=options, service=service)


def section_screenshots(page: Path, out: Path, width: int = 1024, prefix: str = "", only=None):
    """Save each ``<section>`` of ``page`` as a PNG under ``out``; returns [(path, overflow px)]."""
    from selenium.webdriver.common.by import By

    out.mkdir(parents=True, exist_ok=True)
    driver = browser(width)
    shots = []
    try:
        driver.get(Path(page).resolve().as_uri())
        # A window as tall as the page, so that a section below the fold is captured whole.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(int(height) + 100, 30000))
        for n, section in enumerate(driver.find_elements(By.TAG_NAME, "section"), start=1):
            title = section.find_element(By.TAG_NAME, "h2").text
            if only and not any(o.lower() in title.lower() for o in only):
                continue
            overflow = driver.execute_script(
                "const s = arguments[0]; return Math.max(0, s.scrollWidth - s.clientWidth);", section)
            slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]
            path = out / f"{prefix}{n}-{slug}.png"
            section.screenshot(str(path))
            shots.append((path, int(overflow)))
    finally:
        driver.quit()
    return shots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path, help="an HTML page written by traitlens")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="folder for the PNGs")
    parser.add_argument("--width", type=int, default=1024, help="window width in CSS pixels (default 1024)")
    parser.add_argument("--prefix", default="", help="file name prefix")
    parser.add_argument("--only", action="append", default=None, metavar="TITLE",
                        help="only sections whose title contains TITLE (repeatable)")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        print(f"screenshots: {args.page} is not a file", file=sys.stderr)
        return 2
    shots = section_screenshots(args.page, args.out, args.width, args.prefix, args.only)
    for path, overflow in shots:
        note = f"  (overflows by {overflow} px)" if overflow else ""
        print(f"{path}{note}")
    return 1 if any(o for _, o in shots) else 0


if __name__ == "__main__":
    sys.exit(main())
