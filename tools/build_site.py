"""Build the course as a static HTML site from the committed notebooks (`make site`), offline, into build/site/.

    python tools/build_site.py [--out build/site]

Sphinx with MyST-NB reads the notebooks as committed, outputs and figures included, and never executes them
(``nb_execution_mode = "off"``). The navigation follows ``course.toml``: the path first, then the practitioner
notebooks, then the solutions, then the pages of ``docs/``; the front page is README.md. Math is rendered by a copy
of MathJax (from the ``jupyter-server-mathjax`` package) placed in the site itself, so the pages need no network;
the build refuses a page that would load a script or a style sheet from elsewhere. Open build/site/index.html, or
serve it: ``python -m http.server -d build/site``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from course import PARTS, ROOT, load_lessons, missing_notebooks  # noqa: E402

#: docs/ pages in the site's navigation, in the README's order; others follow, by name.
DOCS_ORDER = ["runtimes", "precision", "benchmarks", "analysis", "file_format", "results", "package", "models_and_data",
              "install", "colab", "contributing"]
CAPTIONS = {"path": "The course", "in practice": "In practice (optional)", "solutions": "Solutions"}
CONF = '''# Written by tools/build_site.py for each build: Sphinx with MyST-NB, notebooks never executed, math by a local MathJax.
project = "lowrank"
html_title = "lowrank: LoRA and DoRA from scratch"
extensions = ["myst_nb"]
nb_execution_mode = "off"  # the committed outputs are the site's outputs
nb_ipywidgets_js = {}  # no widget manager fetched from elsewhere
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
html_theme = "furo"
html_static_path = ["_static"]
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"  # relative to _static: no CDN
mathjax2_config = {"tex2jax": {"inlineMath": [["\\\\(", "\\\\)"]], "displayMath": [["\\\\[", "\\\\]"]],
                               "processEscapes": True,
                               # MyST-NB marks each notebook "tex2jax_ignore" and its math "math" (MathJax 3's
                               # processHtmlClass); this is MathJax 2's word for the same choice
                               "processClass": "math|output_area"},
                   # the package ships MathJax's STIX web fonts only (not its TeX fonts): name them, never fetch others
                   "HTML-CSS": {"availableFonts": [], "webFont": "STIX-Web", "imageFont": None},
                   "SVG": {"font": "STIX-Web"}}
exclude_patterns = ["_build"]
suppress_warnings = ["myst.header", "misc.highlighting_failure", "toc.not_included"]
'''
#: <script src="http..."> or <link href="http..."> in a page: something a reader offline would not get.
REMOTE = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//", re.IGNORECASE)


def mathjax_folder() -> Path:
    import jupyter_server_mathjax

    return Path(jupyter_server_mathjax.__file__).parent / "static"


def index_page(lessons) -> str:
    """README.md as the front page, followed by the navigation: one table of contents per part, in course.toml's
    order, then the docs."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    tocs = []
    for part in PARTS:
        entries = [f"{label(lesson)} <{lesson.notebook.removesuffix('.ipynb')}>" for lesson in lessons if lesson.part == part]
        if entries:
            tocs.append(toctree(CAPTIONS[part], entries))
    docs = sorted((ROOT / "docs").glob("*.md"), key=lambda page: (DOCS_ORDER + [page.stem]).index(page.stem))
    if docs:
        tocs.append(toctree("Reference", [f"docs/{page.stem}" for page in docs]))
    return text + "\n\n" + "\n\n".join(tocs) + "\n"


def label(lesson) -> str:
    """The navigation's words for a lesson: "03 · DoRA: magnitude and direction"; a solutions notebook by its title."""
    return lesson.title if lesson.part == "solutions" else f"{lesson.name.split('_')[0]} · {lesson.title}"


def toctree(caption: str, entries: list[str]) -> str:
    return "```{toctree}\n:caption: " + caption + "\n:maxdepth: 1\n:hidden:\n\n" + "\n".join(entries) + "\n```"


def stage(folder: Path) -> list[str]:
    """Lay out Sphinx's source folder; returns the lessons course.toml lists that are not written yet."""
    lessons = load_lessons()
    missing = missing_notebooks(lessons)
    lessons = [lesson for lesson in lessons if lesson not in missing]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for lesson in lessons:
        target = folder / lesson.notebook
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lesson.path, target)
    for sub, pattern in (("docs", "*.md"), ("figures", "*.png")):
        for source in sorted((ROOT / sub).glob(pattern)):
            (folder / sub).mkdir(exist_ok=True)
            shutil.copy2(source, folder / sub / source.name)
    (folder / "index.md").write_text(index_page(lessons), encoding="utf-8")
    (folder / "conf.py").write_text(CONF, encoding="utf-8")
    shutil.copytree(mathjax_folder(), folder / "_static" / "mathjax")
    return [lesson.notebook for lesson in missing]


def remote_assets(site: Path) -> list[str]:
    """Pages that would fetch a script or style sheet from another host."""
    return [str(page.relative_to(site)) for page in sorted(site.rglob("*.html"))
            if REMOTE.search(page.read_text(encoding="utf-8", errors="replace"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    args = parser.parse_args()
    source = ROOT / "build" / "site_source"
    missing = stage(source)
    if missing:
        print(f"not in the site, not written yet: {', '.join(missing)}")
    if args.out.exists():
        shutil.rmtree(args.out)
    subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", "auto", str(source), str(args.out)],
                   check=True)
    remote = remote_assets(args.out)
    if remote:
        raise SystemExit(f"these pages load scripts or styles from another host: {', '.join(remote)}")
    pages = len(list(args.out.rglob("*.html")))
    print(f"{pages} pages in {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}/ "
          f"(open index.html, or: python -m http.server -d {args.out})")


if __name__ == "__main__":
    main()
