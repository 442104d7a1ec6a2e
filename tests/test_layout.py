"""The layout enforces itself: no package file hides behind common ignore rules, layers are checked."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The directory and file patterns of GitHub's standard Python .gitignore (github/gitignore, Python.gitignore)
# that could match source files. An unanchored `build/` there once hid `extes/build/` from git.
PYTHON_GITIGNORE = """
__pycache__/
*.py[cod]
*$py.class
*.so
.Python
build/
develop-eggs/
dist/
downloads/
eggs/
.eggs/
lib/
lib64/
parts/
sdist/
var/
wheels/
share/python-wheels/
*.egg-info/
.installed.cfg
*.egg
MANIFEST
*.manifest
*.spec
pip-log.txt
pip-delete-this-directory.txt
htmlcov/
.tox/
.nox/
.coverage
.coverage.*
.cache
nosetests.xml
coverage.xml
*.cover
*.py,cover
.hypothesis/
.pytest_cache/
cover/
*.mo
*.pot
*.log
local_settings.py
db.sqlite3
db.sqlite3-journal
instance/
.webassets-cache
.scrapy
docs/_build/
.pybuilder/
target/
.ipynb_checkpoints
profile_default/
ipython_config.py
.pdm.toml
__pypackages__/
celerybeat-schedule
celerybeat.pid
*.sage.py
.env
.venv
env/
venv/
ENV/
env.bak/
venv.bak/
.spyderproject
.spyproject
.ropeproject
/site
.mypy_cache/
.dmypy.json
dmypy.json
.pyre/
.pytype/
cython_debug/
"""


def test_no_package_file_is_matched_by_the_standard_python_gitignore(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    patterns = tmp_path / "python.gitignore"
    patterns.write_text(PYTHON_GITIGNORE)
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", f"--exclude-from={patterns}", "--", "extes", "app.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out == [], f"package files hidden by common ignore rules: {out}"
    assert not (ROOT / "extes" / "build").exists()


def test_layer_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed in this environment")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_cli_error_comes_from_the_bottom_layer():
    from extes import cli, errors

    assert cli.CLIError is errors.CLIError
