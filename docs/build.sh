#!/usr/bin/env bash
# Build the documentation into docs/_build/html; any Sphinx warning fails the build.
# Needs the docs extra: pip install ".[docs]"
set -euo pipefail
cd "$(dirname "$0")"
python -m sphinx -W --keep-going -q -b html . _build/html
echo "docs: $(pwd)/_build/html/index.html"
