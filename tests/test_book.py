import re
import subprocess

from facebench.report import collect

from conftest import BIN


def test_book_builds_with_warnings_as_errors_and_shows_the_results(demo_project):
    project, _ = demo_project
    build = subprocess.run([str(BIN / "jupyter-book"), "build", str(project), "-n", "-W", "--keep-going"],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    html = (project / "_build" / "html" / "book" / "results.html").read_text()
    m = collect(project / "grids" / "demo.yaml").set_index("cell").loc["dlib__demo"]
    cell = f"{100 * m['accuracy_mean']:.2f} ± {100 * m['accuracy_std']:.2f}"
    assert re.search(r"<table[^>]*>.*dlib.*" + re.escape(cell), html, re.S), "main table missing"
    intro = (project / "_build" / "html" / "book" / "intro.html").read_text()
    assert f"{m['accuracy_mean']:.1%}" in intro  # glued from the results notebook
    assert (project / "_build" / "html" / "book" / "runs" / "dlib__demo.html").exists()
