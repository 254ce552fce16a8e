"""Screenshot a finished run's Snakemake report in headless Chromium (docs/report-screenshot.png).

    # the README's screenshot: the default run (config/config.yaml), finished in this checkout
    .venv/bin/snakemake --cores 8
    .venv/bin/python tools/report_screenshot.py docs/report-screenshot.png --make-report

    # another workflow folder: its report.html as it is, or written first for its config
    .venv/bin/python tools/report_screenshot.py OUT.png --workdir RUN_DIR
    .venv/bin/python tools/report_screenshot.py OUT.png --workdir RUN_DIR --make-report --configfile tiny.yaml
    # another result of the report
    .venv/bin/python tools/report_screenshot.py OUT.png --view Features "Activation frequency" .png

Reads ``report.html`` in the workflow folder (``--workdir``, default: the current directory; or
``--report PATH``), first writing it with ``snakemake --report`` there when ``--make-report`` is
given (with the run's ``--configfile``s; the run must be finished: the default target makes the
report's figures). The report is a JavaScript app without URLs for its views, so a script
appended to a copy of the page opens one result (``--view CATEGORY SUBCATEGORY SUFFIX``; default
Transcoders > Fidelity, its ``.png`` figure) before Chromium (``chromium`` on the PATH: ``apt-get
install chromium``) takes a 1400x1000 screenshot. The PNG is written to the path given only if
Chromium succeeded and the page logged no JavaScript error; exits 1 otherwise.

tests/workflow/test_report.py renders the tiny run's report with the functions below.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WINDOW = (1400, 1000)  # width, height of the screenshot
VIEW = ("Transcoders", "Fidelity", ".png")  # category, subcategory, suffix of the result shown
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next((found for found in map(shutil.which, CHROMIUM_NAMES) if found), None)


def open_result(page: str, category: str, subcategory: str, suffix: str) -> str:
    """The report page, opened at one result: the report is a JavaScript app without URLs for its
    views, so a script at the end of the page asks the app to show the result and its caption."""
    script = f"""<script>
window.addEventListener('load', function () {{ setTimeout(function () {{
  var path = categories[{category!r}][{subcategory!r}].find(function (p) {{ return p.endsWith({suffix!r}); }});
  app.setView({{navbarMode: 'resultinfo', category: {category!r}, subcategory: {subcategory!r}, resultPath: path,
               content: 'img', contentPath: results[path].data_uri}});
}}, 100); }});
</script>"""
    head, tag, tail = page.rpartition("</body>")  # the last one: the bundled JavaScript quotes "</body>" too
    return head + script + tag + tail


def write_opened(report: Path, out: Path, view: tuple[str, str, str] = VIEW) -> Path:
    """A copy of `report` (report.html) at `out` that opens at `view` when loaded."""
    out.write_text(open_result(report.read_text(encoding="utf-8"), *view), encoding="utf-8")
    return out


def chromium(url: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """Headless Chromium on `url` with `args` (--dump-dom, --screenshot=PATH), a throwaway
    profile, no network of its own, and the page's console on stderr."""
    if CHROMIUM is None:
        raise FileNotFoundError(f"no Chromium on the PATH (looked for {', '.join(CHROMIUM_NAMES)}; "
                                "apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", f"--user-data-dir={profile}", "--window-size={},{}".format(*WINDOW),
                               "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", *args, url],
                              capture_output=True, text=True, timeout=timeout)


def console_errors(stderr: str) -> list[str]:
    """The page's JavaScript errors in Chromium's log (--enable-logging=stderr)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line and re.search(r"Uncaught|Error", line)]


def screenshot(report: Path, out: Path, view: tuple[str, str, str] = VIEW) -> None:
    """Write the PNG of `report` opened at `view` to `out`; nothing is written if Chromium fails
    or the page logs a JavaScript error (the message says which)."""
    with tempfile.TemporaryDirectory(prefix="report-screenshot-") as tmp:
        opened = write_opened(report, Path(tmp) / "report-open.html", view)
        png = Path(tmp) / "report.png"
        shot = chromium(opened.as_uri(), f"--screenshot={png}")
        if shot.returncode != 0 or not png.is_file():
            raise RuntimeError(f"chromium exited with {shot.returncode} and no screenshot:\n{shot.stderr[-3000:]}")
        if errors := console_errors(shot.stderr):
            raise RuntimeError(f"{report} opened at {' > '.join(view)} logged errors:\n" + "\n".join(errors))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, out)


def make_report(workdir: Path, report: Path, configfiles: list[str]) -> None:
    """`snakemake --report` in `workdir` (the run's outputs must exist: it only reads them)."""
    args = [arg for configfile in configfiles for arg in ("--configfile", configfile)]
    subprocess.run([sys.executable, "-m", "snakemake", "--report", str(report.resolve()), *args],
                   cwd=workdir, check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the PNG to write (docs/report-screenshot.png for the README)")
    parser.add_argument("--workdir", type=Path, default=Path("."),
                        help="the workflow folder of the finished run (default: the current directory)")
    parser.add_argument("--report", type=Path, help="the report page (default: WORKDIR/report.html)")
    parser.add_argument("--make-report", action="store_true",
                        help="write the report first with `snakemake --report` in WORKDIR")
    parser.add_argument("--configfile", action="append", default=[],
                        help="the run's config, for --make-report (repeatable)")
    parser.add_argument("--view", nargs=3, metavar=("CATEGORY", "SUBCATEGORY", "SUFFIX"), default=list(VIEW),
                        help="the result shown (default: %(default)s)")
    args = parser.parse_args(argv)
    report = args.report or args.workdir / "report.html"
    if args.make_report:
        make_report(args.workdir, report, args.configfile)
    if not report.is_file():
        parser.error(f"{report} does not exist (write it with --make-report, or snakemake --report)")
    try:
        screenshot(report, args.out, tuple(args.view))
    except (RuntimeError, FileNotFoundError) as error:
        print(f"report_screenshot: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {report} at {' > '.join(args.view)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
