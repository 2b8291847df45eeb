"""The book (issue 4): it builds by running every cell, it works offline, its prose numbers are tied to
the code, and a reader's browser shows what we think it shows.

The first test that needs the built book builds it (``book/build.py``; a cold build executes every chapter,
a few minutes on two cores; later builds come from the execution cache). A file lock keeps parallel
pytest workers from building twice at once.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from notebook_tools import private_socket_probe

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
OUT = ROOT / "build" / "book"
HTML = OUT / "html"
# chapter page -> its graded assignment
CHAPTERS = {
    "ch1_intuition": "ch1_intuition", "ch2_qkv": "ch2_qkv", "ch3_sdpa": "ch3_sdpa", "ch4_masks": "ch4_masks",
    "ch5_multihead": "ch5_multihead", "ch6_cost": "ch6_cost", "ch7_flash": "ch7_flash",
}
PAGES = ["intro", *CHAPTERS, "appendix"]
CODE_CELL = re.compile(r"```\{code-cell\}[^\n]*\n((?::[^\n]*\n)*)(.*?)```", re.S)



def _load(name: str, path: Path):
    """Import a script from book/ under a private name (``build`` alone would clash with PyPI's build)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


browser_check = _load("_book_browser_check", BOOK / "browser_check.py")
book_build = _load("_book_build", BOOK / "build.py")


def build_book(book: Path = BOOK, out: Path = OUT) -> subprocess.CompletedProcess:
    if not (book_build.VENDOR / "mathjax" / "tex-svg.js").is_file():
        subprocess.run(["bash", str(BOOK / "vendor.sh"), str(book_build.VENDOR)], check=True, cwd=ROOT)
        (book_build.VENDOR / ".fetched").touch()
    cmd = [sys.executable, str(BOOK / "build.py"), "--book", str(book), "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.fixture(scope="session")
def built_book() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / ".test-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = build_book()
    assert proc.returncode == 0, f"the book did not build:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return HTML


def sources() -> dict[str, str]:
    return {p: (BOOK / f"{p}.md").read_text() for p in PAGES}


def executed_notebooks() -> dict[str, object]:
    """The executed chapters, with their outputs, from the build's execution cache."""
    from jupyter_cache import get_cache

    cache = get_cache(OUT / ".jupyter_cache")
    out = {}
    for page in [p for p, text in sources().items() if CODE_CELL.search(text)]:  # intro is plain markdown
        rec = cache.get_cached_project_nb(str(BOOK / f"{page}.md"))
        assert rec is not None, f"{page}.md has no up-to-date executed copy in the cache: was it executed?"
        out[page] = cache.get_cache_bundle(rec.pk).nb
    return out


def glued(page: str) -> dict[str, str]:
    """The values a page glued into its prose, as their text/plain repr."""
    path = OUT / "html" / ".." / "jupyter_execute" / f"{page}.glue.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return {k: v["data"]["text/plain"] for k, v in data.items()}


def page_text(page: str) -> str:
    """The visible text of a built page (tags stripped, whitespace squeezed)."""
    html = (HTML / f"{page}.html").read_text()
    html = re.sub(r"<script.*?</script>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# ----------------------------------------------------------------------------------------- the sources
def test_toc_lists_intro_seven_chapters_and_the_appendix():
    import yaml

    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    assert toc["root"] == "intro"
    assert [c["file"] for c in toc["chapters"]] == [*CHAPTERS, "appendix"]


def test_code_cells_are_narrow_enough_for_a_page():
    too_wide = [f"{page}.md: {len(line)} chars: {line.strip()[:60]}"
                for page, text in sources().items()
                for _, body in CODE_CELL.findall(text) for line in body.splitlines() if len(line) > 88]
    assert not too_wide, "code cells must stay within 88 characters:\n" + "\n".join(too_wide)


@pytest.mark.parametrize("page", list(CHAPTERS))
def test_each_chapter_ends_with_check_yourself_and_its_exercise(page):
    text = sources()[page]
    assert "## Check yourself" in text, f"{page}.md has no 'Check yourself' section"
    after = text.split("## Check yourself", 1)[1]
    checks = [body for _, body in CODE_CELL.findall(after)]
    assert checks and all("assert" in body for body in checks), \
        f"{page}.md: the 'Check yourself' cells must assert what they check"
    a = CHAPTERS[page]
    assert f"build/release/{a}/{a}.ipynb" in after, f"{page}.md must point at its released exercise {a}"
    assert f'href="../../release/{a}/{a}.ipynb"' in after


def test_no_committed_figures_every_figure_is_drawn_at_build_time():
    tracked = subprocess.run(["git", "ls-files", "book"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    images = [f for f in tracked if f.lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".svg"))]
    assert not images, f"figures must be made by code at build time, not committed: {images}"


# Every number with a decimal point or a thousands separator in the prose (maths included) must either
# appear literally in that page's code (an input the code uses, e.g. T = 4,096 -> 4096) or be listed here
# with the code that computes it. Glued values ({glue:text}`...`) are computed by the page itself.
def _worked():
    from attn_course.worked_example import PRINTED_OUTPUT, PRINTED_WEIGHTS

    return PRINTED_WEIGHTS, PRINTED_OUTPUT


PROSE_NUMBERS = {
    # ch3: the documents' hand computation 0.378 * 10 + 0.622 * 30 = 22.44, from their printed numbers
    ("ch3_sdpa", "0.378"): lambda: _worked()[0][1][0],
    ("ch3_sdpa", "0.622"): lambda: _worked()[0][1][1],
    ("ch3_sdpa", "22.44"): lambda: round(_worked()[0][1][0] * 10 + _worked()[0][1][1] * 30, 2),
    ("ch4_masks", "2.1"): lambda: 2.1,  # a version number: FlashAttention >= 2.1 aligns causal bottom-right
    ("ch7_flash", "1.5"): lambda: 1.5,  # the A100 HBM bandwidth quoted in the HIERARCHY table's code
    ("ch7_flash", "9.0"): lambda: ".".join(map(str, _variants().TMA_MIN_CAPABILITY)),  # TMA's compute capability
    ("ch7_flash", "65,535"): lambda: f"{_tiles().CUDA_MAX_GRID_YZ:,}",  # CUDA's limit on a grid's y axis
}


def _tiles():
    from attn_course.kernels import _tiles

    return _tiles


def _variants():
    from attn_course.kernels import _variants

    return _variants


def _prose(text: str) -> str:
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
    text = CODE_CELL.sub("", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"\{glue:text\}`[^`]*`", "", text)
    text = re.sub(r"`[^`]*`", "", text)
    return re.sub(r"<[^>]+>", "", text)


def test_every_number_in_the_prose_is_tied_to_code():
    number = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.,])\d+\.\d+")
    untied = []
    for page, text in sources().items():
        code = " ".join(body for _, body in CODE_CELL.findall(text)).replace("_", "")
        for lit in number.findall(_prose(text)):
            if (page, lit) in PROSE_NUMBERS:
                assert f"{PROSE_NUMBERS[page, lit]()}" == lit or math.isclose(PROSE_NUMBERS[page, lit](),
                                                                             float(lit.replace(",", ""))), \
                    f"{page}.md says {lit}, but the code computes {PROSE_NUMBERS[page, lit]()}"
            elif not re.search(rf"(?<![\d.]){re.escape(lit.replace(',', ''))}(?![\d])", code):
                untied.append(f"{page}.md: {lit}")
    assert not untied, ("numbers in the prose that no code computes or uses (glue them, or add them to "
                        "PROSE_NUMBERS with the code that computes them):\n" + "\n".join(untied))


def test_the_drift_check_catches_a_hand_written_number():
    # The same scan must flag a number typed into the prose that no code produces.
    text = "Some prose says the scores take 17.19 GB.\n\n```{code-cell} ipython3\nx = 4096\n```\n"
    number = re.compile(r"(?<![\w.,])\d+\.\d+")
    assert number.findall(_prose(text)) == ["17.19"]
    assert "1719" not in text.replace(".", "").split("```")[1]


# --------------------------------------------------------------------------------------- the built book
def test_every_cell_of_every_chapter_ran_without_error(built_book):
    notebooks = executed_notebooks()
    assert set(notebooks) == {*CHAPTERS, "appendix"}
    for page, nb in notebooks.items():
        n_src = len(CODE_CELL.findall(sources()[page]))
        cells = [c for c in nb.cells if c.cell_type == "code"]
        assert len(cells) == n_src, f"{page}: {len(cells)} executed code cells, the source has {n_src}"
        for i, c in enumerate(cells):
            assert c.get("execution_count"), f"{page}: code cell {i} was not executed"
            errors = [o for o in c.outputs if o.output_type == "error"]
            assert not errors, f"{page}: code cell {i} raised {errors[0].get('ename')}"


def test_every_glue_reference_in_the_prose_was_computed(built_book):
    for page, text in sources().items():
        used = set(re.findall(r"\{glue:text\}`([\w]+)", text))
        missing = used - set(glued(page))
        assert not missing, f"{page}.md refers to glued values its code never computed: {sorted(missing)}"


def _val(page: str, key: str) -> float:
    return float(glued(page)[key])


# Glued numbers recomputed here from first principles (not by calling the book's code), and the formatted
# value found in the rendered page: if the code or the prose drifts, these fail.
INDEPENDENT = [
    ("ch6_cost", "ch6_scores_gb", 4 * 32 * 8192 * 8192 * 2 / 1e9, "{:.2f}", "17.18"),
    ("ch6_cost", "ch6_crossover", 2 * 4096, "{:,.0f}", "8,192"),
    ("ch6_cost", "ch6_share_32k", 2 * 32768**2 * 4096 / (4 * 32768 * 4096**2 + 2 * 32768**2 * 4096) * 100, "{:.0f}",
     "80"),
    ("ch6_cost", "ch6_10k_melems", 10_000**2 / 1e6, "{:.0f}", "100"),
    ("ch5_multihead", "ch5_params_4096", 4 * 4096**2, "{:,.0f}", "67,108,864"),
    ("ch5_multihead", "ch5_llama70_gb", 2 * 4096 * 80 * 8 * 128 * 2 / 1e9, "{:.2f}", "1.34"),
    ("ch2_qkv", "ch2_palm_dk", 18432 / 48, "{:.0f}", "384"),
    ("ch3_sdpa", "ch3_w10", 1 / (1 + math.exp(0.5)), "{:.4f}", "0.3775"),
    ("ch3_sdpa", "ch3_out_live_1", 10 / (1 + math.exp(0.5)) + 30 / (1 + math.exp(-0.5)), "{:.4f}", "22.4492"),
    ("ch7_flash", "ch7_byte_ratio", (4 * 4096 * 64 + 3 * 4096**2) / (2 * 4096 * 64 * (1 + 4096 // 128)), "{:.1f}",
     None),
    ("ch7_flash", "ch7_tiles_skipped", 8 * 7 / 2, "{:.0f}", "28"),
    ("appendix", "app_scores_gb", 17_179_869_184 / 1e9, "{:.2f}", "17.18"),
    ("appendix", "app_params_1024", 4 * 1024**2, "{:,.0f}", "4,194,304"),
    ("appendix", "app_crossover", 2 * 768, "{:,.0f}", "1,536"),
    ("ch1_intuition", "ch1_mean_value", 25.0, "{:.0f}", "25"),
]


@pytest.mark.parametrize("page,key,expected,fmt,shown", INDEPENDENT, ids=[k for _, k, *_ in INDEPENDENT])
def test_glued_numbers_match_an_independent_computation(built_book, page, key, expected, fmt, shown):
    value = _val(page, key)
    assert math.isclose(value, expected, rel_tol=1e-6), f"{page}: {key} = {value}, expected {expected}"
    text = fmt.format(expected)
    assert shown is None or text == shown
    assert f" {text} " in f" {page_text(page)} ".replace("(", " ").replace(")", " "), \
        f"{page}.html does not show {key} as {text}"


def test_the_appendix_decodes_with_the_kernels_cache(built_book):
    assert 0 <= _val("appendix", "app_kvcache_err") < 1e-5  # one token at a time vs full causal attention
    assert 0 <= _val("appendix", "app_split_err") < 1e-5  # key slices combined by their logsumexps
    assert 0 <= _val("appendix", "app_kernel_split_err") < 1e-5  # the kernel with num_splits=3


def test_worked_example_numbers_in_chapter_3(built_book):
    assert _val("ch3_sdpa", "ch3_o_err") < 0.01   # live outputs within 0.01 of the printed ones
    assert _val("ch3_sdpa", "ch3_w_err") < 5e-4   # weights agree to the printed 3 decimals
    assert _val("ch3_sdpa", "ch3_o_err") > 1e-3   # ... and the outputs really differ (rounded weights)


def test_pages_load_nothing_from_the_network(built_book):
    for page in PAGES:
        html = (HTML / f"{page}.html").read_text()
        refs = re.findall(r'<script[^>]*\bsrc="([^"]+)"', html) + re.findall(r'<link[^>]*\bhref="([^"]+)"', html)
        remote = [r for r in refs if re.match(r"(https?:)?//", r)]
        assert not remote, f"{page}.html loads {remote} from the network"
        for r in refs:
            local = (HTML / r.split("?")[0].split("#")[0])
            assert local.exists(), f"{page}.html refers to {r}, which is not in the built site"
    assert (HTML / "_static" / "mathjax" / "tex-svg.js").is_file()
    assert (HTML / "_static" / "widgets" / "embed.js").is_file()


def test_widget_state_is_saved_for_every_widget(built_book):
    pages_with_widgets = 0
    for page in PAGES:
        html = (HTML / f"{page}.html").read_text()
        views = re.findall(r'<script type="application/vnd.jupyter.widget-view\+json">(.*?)</script>', html, re.S)
        if not views:
            continue
        pages_with_widgets += 1
        state = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', html, re.S)
        assert state, f"{page}.html shows widgets but saved no widget state"
        models = json.loads(state.group(1))["state"]
        for v in views:
            assert json.loads(v)["model_id"] in models, f"{page}.html: a widget view has no saved model"
    assert pages_with_widgets >= 4  # temperature, d_k, mask builder, online-softmax stepper


def test_headless_chromium_offline_sees_every_page_rendered(built_book):
    if browser_check.find_chromium() is None:
        pytest.fail("Chromium is not installed: `make system-deps` installs Debian's chromium (as root), "
                    "or run `apt-get install chromium`")
    shots = OUT / "screenshots"
    shutil.rmtree(shots, ignore_errors=True)
    reports = browser_check.check_book(HTML, PAGES, shots)
    problems = {r["page"]: browser_check.failures(r) for r in reports}
    assert not any(problems.values()), json.dumps({p: f for p, f in problems.items() if f}, indent=1)
    by_page = {r["page"]: r for r in reports}
    for page in CHAPTERS:
        r = by_page[f"{page}.html"]
        assert r["maths"] > 0 and r["images"] > 0, f"{page}: expected typeset maths and figures, got {r}"
        assert Path(r["screenshot"]).stat().st_size > 20_000, f"{page}: the screenshot looks empty"
    assert sum(r["widgets"] for r in reports) >= 5
    # every widget has its static fallback, and with JavaScript off the fallbacks are what the reader sees
    assert sum(r["fallbacks"] for r in reports) == sum(r["widgets"] for r in reports)
    for r in reports:
        assert r["noJs"]["renderedWidgets"] == 0, f"{r['page']}: widgets rendered with JavaScript off?"
        assert len(r["noJs"]["fallbacks"]) == r["widgets"] and all(r["noJs"]["fallbacks"]), r["page"]
    # the animations loaded with every frame: the GIF's frames counted by the browser's own decoder,
    # the player's on its slider (and its 'next' button shows another frame; failures() checks that)
    anims = {page: by_page[f"{page}.html"]["animations"] for page in ("ch1_intuition", "ch4_masks", "ch7_flash")}
    assert [a["kind"] for a in anims["ch1_intuition"]] == [a["kind"] for a in anims["ch4_masks"]] == ["gif"]
    assert [a["kind"] for a in anims["ch7_flash"]] == ["player"]
    assert anims["ch7_flash"][0]["frames"] == 4 * 5 // 2  # causal walk, 16 tokens in tiles of 4: 10 tiles
    assert anims["ch1_intuition"][0]["frames"] in (None, anims["ch1_intuition"][0]["declared"])
    assert anims["ch4_masks"][0]["frames"] in (None, 7)  # one frame per generated token
    assert all(a["loaded"] and a["declared"] > 1 for page in anims.values() for a in page)
    assert by_page["ch1_intuition.html"]["noJs"]["gifs"] == [True]  # the GIF plays with no script at all
    assert by_page["ch7_flash.html"]["noJs"]["stills"] == 1  # the player leaves its last frame in <noscript>


def test_widgets_respond_in_the_static_page_without_a_kernel(built_book):
    # The mask builder's buttons are linked to its frames in the browser (jslink), so they work offline.
    if browser_check.find_chromium() is None:
        pytest.fail("Chromium is not installed (see the previous test)")
    chrome = browser_check.Chromium(browser_check.find_chromium())
    try:
        before, after = browser_check.click_widget_button(chrome, HTML / "ch4_masks.html", "prefix-LM (prefix 4)")
    finally:
        chrome.close()
    assert after is not None, "the mask builder's 'prefix-LM (prefix 4)' button was not found"
    assert "causal" in before and "prefix-LM (prefix 4)" in after and "causal" not in after


def test_the_browser_check_reports_raw_maths_and_broken_images(tmp_path):
    # A page with untypeset maths, a missing image and a JS error must fail the check.
    if browser_check.find_chromium() is None:
        pytest.fail("Chromium is not installed (see the previous test)")
    (tmp_path / "bad.html").write_text(
        '<html><body><main><p>raw maths: \\(x^2\\)</p><span class="math">\\(y\\)</span>'
        '<img src="missing.png"><script>undefined_function()</script></main></body></html>')
    (report,) = browser_check.check_book(tmp_path, ["bad"], None, wait_s=2)
    f = "\n".join(browser_check.failures(report))
    assert "JavaScript error" in f and "maths not typeset" in f and "raw TeX" in f and "image did not load" in f


def mini_book(folder: Path, cells: list[str], mode: str = "cache") -> Path:
    """A one-page book with the real configuration and extensions (myst-nb's execution ``mode`` aside), whose
    page runs ``cells``."""
    folder.mkdir()
    config = (BOOK / "_config.yml").read_text()
    assert "execute_notebooks: cache" in config, "the book's execution mode changed: update mini_book"
    (folder / "_config.yml").write_text(config.replace("execute_notebooks: cache", f"execute_notebooks: {mode}"))
    shutil.copytree(BOOK / "_ext", folder / "_ext")
    (folder / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    header = sources()["ch1_intuition"].split("---", 2)[1]
    body = "".join(f"```{{code-cell}} ipython3\n{cell}\n```\n\n" for cell in cells)
    (folder / "intro.md").write_text(f"---{header}---\n\n# Mini\n\n{body}")
    return folder


@pytest.mark.parametrize("mode", ["cache", "inline"])
def test_the_chapter_kernels_talk_over_private_unix_sockets_not_tcp(tmp_path, built_book, mode):
    """myst-nb starts each chapter's kernel without any traitlets configuration (through jupyter-cache in the
    book's ``cache`` mode, by itself in ``inline`` mode), so it would listen on localhost TCP ports (which any
    local process may connect to; ipykernel 7 warns once per chapter). The page's cell asks its own kernel;
    without book/_ext/private_kernels.py it fails ('transport tcp')."""
    probe = private_socket_probe("attn-book-") + "print('SOCKETS IN', folder)"
    proc = build_book(mini_book(tmp_path / "book", [probe], mode), tmp_path / "out")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the probe cell failed:\n{log[-3000:]}"
    assert "without encryption" not in log, "a kernel still listened on TCP"
    page = (tmp_path / "out" / "html" / "intro.html").read_text()
    folder = re.search(r"SOCKETS IN (\S+attn-book-\w+)", page)
    assert folder, "the probe's output is missing from the page"
    assert not Path(folder.group(1)).exists(), "the build left its socket folder behind"


def test_the_socket_extension_restores_jupyter_cache_and_keeps_tcp_under_a_deep_tmpdir(tmp_path, monkeypatch):
    """Between builds jupyter-cache's and myst-nb's calls into nbclient are their own again and the socket
    folder is gone; where the temporary folder is too deep for a socket path the build keeps TCP (and says so)
    instead of failing."""
    from jupyter_cache.executors import utils
    from myst_nb.core.execute import inline

    ext = _load("_book_private_kernels", BOOK / "_ext" / "private_kernels.py")
    sites = [(utils, "executenb"), (inline, "ModifiedNotebookClient")]
    originals = [getattr(module, name) for module, name in sites]
    folder = ext.install()
    try:
        assert folder is not None and folder.is_dir()
        for (module, name), original in zip(sites, originals, strict=True):
            assert getattr(module, name) is not original and getattr(module, name).__wrapped__ is original, name
    finally:
        ext.uninstall()
    assert [getattr(module, name) for module, name in sites] == originals and not folder.exists()

    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(deep))
    assert ext.install() is None, "a socket path over 107 bytes cannot be bound: the kernels must keep TCP"
    assert [getattr(module, name) for module, name in sites] == originals and not any(deep.iterdir())
    ext.uninstall()


def test_a_failing_cell_fails_the_build(tmp_path, built_book):
    book = mini_book(tmp_path / "book", ["raise ValueError('a deliberately failing cell')"])
    proc = build_book(book, tmp_path / "out")
    assert proc.returncode != 0, "a chapter whose cell raises must fail the build"
    assert "deliberately failing cell" in proc.stdout + proc.stderr


# ------------------------------------------------------------------ animations and static widget fallbacks
sys.path.append(str(BOOK))  # the chapters import their helpers from book/; appended, so book/build.py shadows nothing


def _sections(html: str, cls: str) -> list[str]:
    """The opening tags of every element with class ``cls`` in ``html``."""
    return re.findall(rf'<[a-z]+ class="{cls}"[^>]*>', html)


def _frames_in_widget_stacks(html: str) -> list[int]:
    """How many frames each saved ``Stack`` widget holds, in the page's saved widget state."""
    state = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', html, re.S)
    models = json.loads(state.group(1))["state"] if state else {}
    return sorted(len(m["state"]["children"]) for m in models.values() if m["model_name"] == "StackModel")


def test_every_widget_has_a_static_fallback_with_all_its_states(built_book):
    for page in PAGES:
        html = (HTML / f"{page}.html").read_text()
        n_widgets = len(re.findall(r'<script type="application/vnd.jupyter.widget-view\+json">', html))
        figures = _sections(html, "widget-fallback")
        assert len(figures) == n_widgets, f"{page}: {n_widgets} widgets but {len(figures)} static fallbacks"
        states = sorted(int(re.search(r'data-states="(\d+)"', f).group(1)) for f in figures)
        assert states == _frames_in_widget_stacks(html), f"{page}: a fallback does not show every frame"
        if n_widgets:  # the page says what needs a live kernel, and where to get one
            assert f"jupyter_execute/{page}.ipynb" in page_text(page) and "live kernel" in page_text(page)


def _embedded(html: str, kind: str) -> list[tuple[int, str]]:
    """(declared frames, inner HTML up to the next animation) for each animation of ``kind``."""
    parts = re.split(r'(?=<div class="book-animation")', html)[1:]
    out = []
    for part in parts:
        head = re.match(r'<div class="book-animation" data-kind="(\w+)" data-frames="(\d+)"', part)
        if head.group(1) == kind:
            out.append((int(head.group(2)), part))
    return out


def test_the_temperature_gif_holds_every_frame_and_changes(built_book):
    import base64
    import io

    from PIL import Image, ImageChops

    (declared, body), = _embedded((HTML / "ch1_intuition.html").read_text(), "gif")
    gif = Image.open(io.BytesIO(base64.b64decode(re.search(r'data:image/gif;base64,([^"]+)"', body).group(1))))
    assert gif.n_frames == declared == 24 + 22  # 24 temperatures down, back up without repeating the ends
    gif.seek(0)
    first = gif.convert("RGB")
    gif.seek(23)
    coldest = gif.convert("RGB")
    assert ImageChops.difference(first, coldest).getbbox() is not None, "the animation's frames are all alike"


def test_the_decoding_gif_has_one_frame_per_token(built_book):
    import base64
    import io

    from PIL import Image

    (declared, body), = _embedded((HTML / "ch4_masks.html").read_text(), "gif")
    gif = Image.open(io.BytesIO(base64.b64decode(re.search(r'data:image/gif;base64,([^"]+)"', body).group(1))))
    assert gif.n_frames == declared == 7  # the chapter decodes a sequence of 7 tokens


def test_the_tile_walk_player_embeds_its_frames_offline(built_book):
    html = (HTML / "ch7_flash.html").read_text()
    (declared, body), = _embedded(html, "player")
    frames = re.findall(r'frames\[\d+\] = "data:image/png;base64,', body)
    assert len(frames) == declared == 10
    assert "font-awesome" not in html and "fa fa-" not in body
    assert "<noscript><img" in body


def test_animation_helpers_embed_frames_and_refuse_bad_input():
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import bookanim
    from bookhelpers import plt
    from PIL import Image

    def frames_fig():
        fig, ax = plt.subplots(figsize=(2, 1.5))
        return fig, lambda i: (ax.clear(), ax.bar([0, 1, 2], [i, 2 - i, 1]))

    fig, draw = frames_fig()
    out = bookanim.gif(fig, draw, 3, alt="t", caption="c")
    data = base64.b64decode(re.search(r"base64,([^\"]+)", out).group(1))
    assert Image.open(io.BytesIO(data)).n_frames == 3 and 'data-frames="3"' in out
    fig, draw = frames_fig()
    out = bookanim.player(fig, draw, 3, alt="t", caption="c")
    assert len(re.findall(r'frames\[\d+\] = "data:image/png', out)) == 3
    assert not re.search(r"https?://", out) and "fa fa-" not in out
    fig, draw = frames_fig()
    with pytest.raises(ValueError, match="at least 2 frames"):
        bookanim.gif(fig, draw, 1, alt="t", caption="c")
    with pytest.raises(ValueError, match="interval_ms"):
        bookanim.player(fig, draw, 2, alt="t", caption="c", interval_ms=0)
    plt.close("all")


def test_fallback_sheet_tiles_every_frame_and_names_the_notebook():
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    from bookhelpers import fallback_sheet, fig_to_img, plt
    from PIL import Image

    frames = []
    for c in ["red", "green", "blue", "orange", "purple"]:
        fig = plt.figure(figsize=(1, 1))
        fig.patch.set_facecolor(c)
        frames.append(fig_to_img(fig, c))
    out = fallback_sheet(frames, "ch9_demo", "try other colours")
    sheet = Image.open(io.BytesIO(base64.b64decode(re.search(r"base64,([^\"]+)", out).group(1)))).convert("RGB")
    tile = Image.open(io.BytesIO(base64.b64decode(re.search(r"base64,([^\"]+)", frames[0]).group(1))))
    assert sheet.size == (4 * tile.width, 2 * tile.height)  # 5 frames: two rows of up to four
    # each tile sits in its place: the centre of tile i has frame i's colour
    centre = [sheet.getpixel(((i % 4) * tile.width + tile.width // 2, (i // 4) * tile.height + tile.height // 2))
              for i in range(5)]
    assert centre[0][0] > 200 > centre[0][2] and centre[2][2] > 200 > centre[2][0]
    assert 'data-states="5"' in out and "jupyter_execute/ch9_demo.ipynb" in out and "try other colours" in out
    with pytest.raises(ValueError, match="inline PNG"):
        fallback_sheet(["<p>not a figure</p>"], "ch9_demo", "x")


def test_the_browser_check_reports_missing_fallbacks_and_broken_animations(tmp_path):
    if browser_check.find_chromium() is None:
        pytest.fail("Chromium is not installed (see the headless Chromium test)")
    (tmp_path / "bad.html").write_text(
        '<html><body><main><div class="cell_output">'
        '<script type="application/vnd.jupyter.widget-view+json">{"model_id": "x"}</script></div>'
        '<figure class="widget-fallback"><img src="missing.png"></figure>'
        '<div class="book-animation" data-kind="player" data-frames="3"><img src="missing2.png"></div>'
        '</main></body></html>')
    (report,) = browser_check.check_book(tmp_path, ["bad"], None, wait_s=2)
    f = "\n".join(browser_check.failures(report))
    assert "1 widgets have no static fallback" in f
    assert "1 static fallback figures did not load" in f
    assert "animation 0 (player): its image did not load" in f and "page shows 0 frames" in f
    assert "'Next frame' did not show another loaded frame" in f
    assert "with JavaScript off, only 0 of 1 static fallback figures show" in f


def test_the_built_book_leaks_no_solution_or_hidden_test(built_book):
    """The release ships this book: no solution block or hidden test of solutions/ may appear in any page or
    source it holds (the same check `make release` runs; reviewed exceptions are in BOOK_MAY_SHOW)."""
    from autograder import leakcheck

    leaks = leakcheck.check_paths([built_book])
    assert leaks == [], "\n".join(map(str, leaks[:10]))
