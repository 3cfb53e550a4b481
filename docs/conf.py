"""Sphinx configuration of the mlmix documentation (build: ``bash docs/build.sh``).

The configuration reference is rendered from :mod:`mlmix.schema` at every build, the
same tables the checkers accept, so it cannot drift from the code.
"""

from pathlib import Path

from mlmix import __version__, schema

HERE = Path(__file__).resolve().parent

project = "mlmix"
author = "The mlmix maintainers"
copyright = "2026, The mlmix maintainers"
version = release = __version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# examples/ and studies/ are links to the repository's folders, so that the README's
# figures resolve; their own files are not pages of this site.
exclude_patterns = ["_build", "_generated", "examples", "studies"]
myst_heading_anchors = 3
# The README is written for GitHub: its links to files in the repository are not
# documents of this site.
suppress_warnings = ["myst.xref_missing"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "alabaster"
html_title = f"mlmix {__version__}"


def _write_reference() -> None:
    out = HERE / "_generated"
    out.mkdir(exist_ok=True)
    parts = {
        "run.md": ("`mlmix run` file", schema.reference_markdown(schema.RUN)),
        "potential.md": ("Potential tables", schema.reference_markdown(schema.POTENTIAL)),
        "fit.md": ("`mlmix fit` file", schema.reference_markdown(schema.FIT)),
    }
    for name, (title, body) in parts.items():
        text = f"## {title}\n\n{body}"
        path = out / name
        if not path.is_file() or path.read_text() != text:  # unchanged: no rebuild
            path.write_text(text)


_write_reference()
