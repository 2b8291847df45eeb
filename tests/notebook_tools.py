"""Reading the exercise notebooks the way nbgrader does, shared by the exercise and grading tests."""

from __future__ import annotations

import copy
import importlib
import linecache
from pathlib import Path

import nbformat
from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions

ROOT = Path(__file__).resolve().parent.parent


def load(assignment: str) -> nbformat.NotebookNode:
    """The instructor's source notebook ``solutions/<assignment>/<assignment>.ipynb``."""
    return nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)


def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def is_test_cell(cell) -> bool:
    """An autograded test cell: code, graded, not a solution."""
    m = nbgrader_meta(cell)
    return cell.cell_type == "code" and m.get("grade", False) and not m.get("solution", False)


def run_cells(nb) -> dict:
    """Run every non-test code cell of ``nb`` in this process, in order, and return the names they define. Cell
    sources go into ``linecache`` because ``@triton.jit`` reads its function's source."""
    ns: dict = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or is_test_cell(cell):
            continue
        name = f"<{nbgrader_meta(cell).get('grade_id', 'cell')}-{i}-{id(nb)}>"
        linecache.cache[name] = (len(cell.source), None, cell.source.splitlines(True), name)
        exec(compile(cell.source, name, "exec"), ns)
    return ns


def private_socket_probe(prefix: str) -> str:
    """A cell that asks its own kernel how it talks to its client: it fails unless over Unix sockets ("ipc") in a
    folder named ``prefix...`` that only its owner may enter (mode 0o700)."""
    return (
        "from pathlib import Path\nfrom ipykernel.kernelapp import IPKernelApp\napp = IPKernelApp.instance()\n"
        "assert app.transport == 'ipc', f'transport {app.transport}'\nfolder = Path(app.ip).parent\n"
        f"assert folder.name.startswith({prefix!r}) and oct(folder.stat().st_mode & 0o777) == '0o700', app.ip\n"
    )


def spec(assignment: str) -> dict:
    """The trusted-verdict spec ``GRADED`` of ``autograder/specs/<assignment>.py``."""
    return importlib.import_module(f"autograder.specs.{assignment}").GRADED


def student_version(nb) -> nbformat.NotebookNode:
    """What nbgrader releases: solution regions stubbed out, hidden tests removed."""
    nb, resources = ClearSolutions().preprocess(copy.deepcopy(nb), {})
    return ClearHiddenTests().preprocess(nb, resources)[0]
