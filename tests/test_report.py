"""benchmarks.report turns a folder of small results into one HTML page, checked in a real headless Chromium: the page
loads with nothing on the console and shows every table; plus benchmarks.meta, which every result carries."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from benchmarks import meta as M
from benchmarks import report

TEST_META = {"machine": {"cpu": "Test CPU 9000", "cores": 2, "gpu": "none", "platform": "Linux", "python": "3"},
             "commit": "0123456789abcdef0123456789abcdef01234567+dirty", "date": "2025-01-02T03:04:05Z",
             "command": "python -m benchmarks.classical tiny --quick"}
GPU_META = dict(TEST_META, machine=dict(TEST_META["machine"], gpu="NVIDIA H200"), commit="f" * 40,
                command="python -m benchmarks.rd --clip tiny --quick")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is not installed: the report test needs a real headless browser "
                "(`apt-get install -y chromium`; .ci/run installs it when it is missing)", pytrace=False)


def browse(page: Path, tmp_path: Path, *flags: str) -> tuple[str, list[str]]:
    """Open a page in headless Chromium: (what it printed, its console lines)."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0", *flags,
           page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    # a page's console messages (errors, uncaught exceptions, CSP violations) are logged as ...:CONSOLE...
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return done.stdout, console


class Parts(HTMLParser):
    """Caption texts, <table> count and every src/href of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.captions, self.tables, self.links, self._in = [], 0, [], False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tables += tag == "table"
        self._in = self._in or tag == "caption"
        if tag == "caption":
            self.captions.append("")
        self.links += [(tag, k, v) for k, v in attrs if k in ("src", "href")]

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in = False

    def handle_data(self, data):
        if self._in:
            self.captions[-1] += data


def results_folder(root: Path) -> Path:
    """A folder like the benchmarks leave: two curves of one clip, a coder run, and older files without meta."""
    (root / "rd").mkdir(parents=True)
    (root / "coder").mkdir()

    def put(rel, obj):
        (root / rel).write_text(obj if isinstance(obj, str) else json.dumps(obj))

    put("rd/tiny_x265_medium.json", {"name": "x265 medium", "clip": "tiny", "meta": TEST_META, "results": {
        "crf": [23, 28, 33, 38], "bpp": [0.4, 0.2, 0.1, 0.05], "psnr-rgb": [38.0, 35.5, 33.0, 30.5],
        "ms-ssim-rgb": [0.99, 0.98, 0.96, 0.93], "encoding_time": [1.0, 0.8, 0.7, 0.6],
        "decoding_time": [0.1, 0.1, 0.1, 0.1]}})
    put("rd/tiny_hnerv.json", {"name": "HNeRV <ncodec> & co", "clip": "tiny", "meta": GPU_META, "results": {
        "size": ["0.1M", "0.2M", "0.4M", "0.8M"], "params": [1e5, 2e5, 4e5, 8e5], "bpp": [0.1, 0.2, 0.4, 0.8],
        "psnr-rgb": [31.0, 33.0, 35.0, 37.0], "ms-ssim-rgb": [0.9, 0.93, 0.95, 0.97]}})
    put("rd/tiny_summary.json", {"device": "NVIDIA H200", "meta": GPU_META,
                                 "rows": [{"codec": "hnerv", "size": "0.1M", "bpp": 0.1, "psnr-rgb": 31.0}],
                                 "bd": [{"codec": "HNeRV", "anchor": "x265 medium", "bd_rate_%": 12.5}]})
    put("coder/coder.json", {"machine": "Test CPU 9000, 2 cores, no GPU", "meta": TEST_META, "repeats": 1,
                             "throughput": [{"model": "Categorical", "symbols": 100, "encode_msym_per_s": 1.5,
                                             "over_ideal_%": 0.01, "goal": "ok"}],
                             "categorical_tables": [{"weights": 10, "alphabet_size": 255, "stored_table_bytes": 87}]})
    # written before benchmarks.meta: old key spellings, a bare list of rows, no meta
    put("old_summary.json", {"device": "CPU x86_64 x2", "rows": [{"codec": "nerv", "psnr": 30.1, "ms_ssim": 0.9}]})
    put("baselines_10.json", [{"method": "jpeg", "quality": 50, "bytes_per_image": 900.5, "top1": 0.8}])
    put("broken.json", "{not json")
    put(".tiny.tmp.json", "{}")                       # an atomic write's temporary: not a result
    return root


def expected_captions() -> set[str]:
    return {"Results: the machine, commit, date and command of each file", "Files that could not be read",
            "rd/tiny_x265_medium.json · x265 medium: RD points", "rd/tiny_x265_medium.json · values",
            "rd/tiny_hnerv.json · HNeRV <ncodec> & co: RD points", "rd/tiny_hnerv.json · values",
            "rd/tiny_summary.json · rows",
            "rd/tiny_summary.json · bd", "rd/tiny_summary.json · values", "coder/coder.json · throughput",
            "coder/coder.json · categorical_tables", "coder/coder.json · values", "old_summary.json · rows",
            "old_summary.json · values", "baselines_10.json · rows"}


def test_report_page_renders_in_headless_chromium(tmp_path):
    root = results_folder(tmp_path / "out")
    assert report.main([str(root)]) == 0
    page = root / "report.html"
    text = page.read_text()
    written = Parts(text)
    assert set(written.captions) == expected_captions() and written.tables == len(written.captions)

    # self-contained: only data: images and in-page links, inline CSS, no scripts, a CSP that blocks any load
    assert "<script" not in text and "<link" not in text and "Content-Security-Policy" in text
    images = [v for tag, k, v in written.links if k == "src"]
    assert len(images) == 1                                       # the one clip's RD plot
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(v.startswith("#") for tag, k, v in written.links if k == "href")
    # escaped: the name's markup is text, not an element
    assert "<ncodec>" not in text and "HNeRV &lt;ncodec&gt; &amp; co" in text

    dom, console = browse(page, tmp_path, "--dump-dom")
    assert not console, "the report page logged to the console:\n" + "\n".join(console)
    shown = Parts(dom)
    assert sorted(shown.captions) == sorted(written.captions), "a table's caption is missing from the page"
    assert shown.tables == written.tables
    # the machine, commit, date and command of each result; "unknown" where an older file has none
    for needle in ("Test CPU 9000, 2 cores, no GPU", "GPU NVIDIA H200", TEST_META["commit"], "f" * 40,
                   "2025-01-02T03:04:05Z", "python -m benchmarks.rd --clip tiny --quick", "CPU x86_64 x2 (no meta"):
        assert needle in dom, needle
    assert "&lt;ncodec&gt;" in dom and "<ncodec>" not in dom

    shot = tmp_path / "report.png"
    _, console = browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars")
    assert not console, "\n".join(console)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_the_console_check_sees_errors(tmp_path):
    """The check above would notice: an uncaught exception and a load the page's CSP blocks both reach it."""
    bad = tmp_path / "bad.html"
    bad.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{report.CSP}">'
                   '</head><body><img src="https://example.invalid/x.png"><table><caption>t</caption></table>'
                   "</body></html>")
    _, console = browse(bad, tmp_path, "--dump-dom")
    assert any("Content Security Policy" in line for line in console), console
    scripted = tmp_path / "script.html"
    scripted.write_text("<!DOCTYPE html><html><body><script>notDefined()</script></body></html>")
    _, console = browse(scripted, tmp_path, "--dump-dom")
    assert any("Uncaught" in line for line in console), console


def test_report_output_option_and_errors(tmp_path, capsys):
    root = results_folder(tmp_path / "out")
    target = tmp_path / "elsewhere" / "r.html"
    assert report.main([str(root), "-o", str(target), "--anchor", "HNeRV"]) == 0
    assert target.read_text().startswith("<!DOCTYPE html>") and not (root / "report.html").exists()
    assert report.main([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "no *.json results" in capsys.readouterr().err


def test_run_meta_names_machine_commit_date_and_command(tmp_path):
    meta = M.run_meta("benchmarks.rd", ["--clip", "carphone", "--quick"])
    assert set(meta) == {"machine", "commit", "date", "command"}
    assert meta["command"] == "python -m benchmarks.rd --clip carphone --quick"
    assert meta["machine"]["cpu"] and meta["machine"]["cores"] >= 1 and meta["machine"]["gpu"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["date"])
    assert re.fullmatch(r"([0-9a-f]{40}(\+dirty)?|unknown)", meta["commit"])   # a clean clone: no +dirty
    assert M.git_commit(tmp_path) == "unknown"                                  # outside a checkout
    assert "cores" in M.machine_line(meta) and M.machine_line(GPU_META).endswith("GPU NVIDIA H200")
    assert M.command_line("benchmarks.x", ["a b", "c"]) == "python -m benchmarks.x 'a b' c"


def test_git_commit_marks_a_changed_tree_dirty(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), *env, "commit", "-q", "-m", "x"], check=True)
    clean = M.git_commit(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", clean)
    (tmp_path / "new").write_text("untracked files do not count")
    assert M.git_commit(tmp_path) == clean
    (tmp_path / "f").write_text("2")
    assert M.git_commit(tmp_path) == clean + "+dirty"


def test_benchmark_json_keys_have_no_spaces_or_capitals():
    from benchmarks.classical import result_json
    from benchmarks.coder import table_sizes

    row = {"crf": 23, "bpp": 0.1, "psnr": 35.0, "ms_ssim": 0.97, "encode_fps": 10.0, "decode_fps": 100.0,
           "encoding_time": 0.8, "decoding_time": 0.08, "frames": 8}
    record = result_json("tiny", "tiny clip", "libx265", "medium", [row], TEST_META)
    assert not M.bad_keys(record) and record["meta"] == TEST_META
    assert {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"} <= set(record["results"])
    assert not M.bad_keys(table_sizes(quick=True))
    assert M.bad_keys({"rows": [{"enc Msym/s": 1, "ok": 2}], "K": 1}) == ["rows[0].enc Msym/s", "K"]
