"""The package's metadata says one truth: Python version, licence, dependencies, lint, and
the README's table of the modules."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_an_spdx_licence_string_has_the_setuptools_that_reads_it():
    assert PROJECT["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    (requirement,) = [r for r in PROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.search(r">=(\d+)", requirement).group(1)) >= 77  # PEP 639 strings


def test_one_python_version_everywhere():
    assert PROJECT["project"]["requires-python"] == ">=3.11"
    assert PROJECT["tool"]["ruff"]["target-version"] == "py311"
    for page in ("README.md", "book/running.md"):
        said = set(re.findall(r"Python (3\.\d+)", (ROOT / page).read_text()))
        assert said <= {"3.11"}, (page, said)


# Import names whose distribution is named otherwise (when it is not installed here to ask).
DISTRIBUTIONS = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml"}


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    """The distributions named by requirement strings (comments and options skipped)."""
    names = set()
    for line in requirements:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(_normalised(re.match(r"[A-Za-z0-9_.-]+", line).group()))
    return names


def _import_statements(path: Path) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of a source file, at its top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def _third_party_imports() -> dict[str, set[str]]:
    """The distribution of every top-level module imported by ``dyntemp/**/*.py`` (inside
    functions too) outside the standard library and dyntemp, with the files importing it."""
    installed = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "dyntemp").rglob("*.py")):
        for node in _import_statements(path):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "dyntemp":
                    continue
                name = DISTRIBUTIONS.get(top) or (installed.get(top) or [top])[0]
                found.setdefault(_normalised(name), set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_the_import_scan_finds_what_the_library_imports():
    imports = _third_party_imports()
    assert {"torch", "numpy", "sympy", "scikit-learn", "pillow", "lightly"} <= set(imports)
    assert imports["scikit-learn"] == {"dyntemp/run_metrics.py"}  # as `import sklearn`
    assert not {"os", "json", "dyntemp", "sklearn", "pil"} & set(imports)


def test_every_imported_third_party_package_is_declared():
    """Declared in pyproject.toml (dependencies or an extra) and installed by requirements.txt;
    a package only the benchmarks import may instead be installed by ``make bench``."""
    project = PROJECT["project"]
    extras = [d for extra in project["optional-dependencies"].values() for d in extra]
    declared = _requirement_names(project["dependencies"] + extras)
    requirements = _requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    bench = (ROOT / "Makefile").read_text().split("\nbench:")[1].split("\n\n")[0]
    bench_installs = {_normalised(n) for n in re.findall(r"pip install -q ([\w.-]+)", bench)}
    for name, files in _third_party_imports().items():
        assert name in declared, f"{name} (imported by {sorted(files)}) is not in pyproject.toml"
        only_bench = all(f.startswith("dyntemp/bench/") for f in files)
        assert name in requirements or (only_bench and name in bench_installs), (
            f"{name} (imported by {sorted(files)}) is not in requirements.txt"
        )


def _lint_commands() -> list[str]:
    """The commands of the Makefile's ``lint`` target, ``$(BIN)`` the running Python's."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlint:")[1].split("\n\n")[0].splitlines()[1:]
    commands = [line.strip().replace("$(BIN)", str(Path(sys.executable).parent)) for line in recipe]
    assert commands and not any("$(" in command for command in commands), commands
    return commands


def _failing(commands: list[str], folder: Path) -> list[str]:
    return [c for c in commands if subprocess.run(c, shell=True, cwd=folder).returncode != 0]


def test_lint_fails_on_a_misformatted_file_that_ruff_check_passes(tmp_path):
    """``make lint`` checks the format too: on a folder with the project's ruff settings it
    passes a formatted file and fails one that only the formatter objects to."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    commands = _lint_commands()
    (tmp_path / "code.py").write_text('SETTINGS = {"tau": 0.2}\n')
    assert _failing(commands, tmp_path) == []
    (tmp_path / "code.py").write_text("SETTINGS = {'tau' :0.2}\n")
    ruff = Path(sys.executable).parent / "ruff"
    assert subprocess.run([ruff, "check", "code.py"], cwd=tmp_path).returncode == 0
    assert _failing(commands, tmp_path)


def test_the_readmes_module_table_has_a_line_for_every_module():
    """README's "The library" lists each module of dyntemp (and the bench package) once, and
    nothing that is gone: a new module without its line fails here."""
    readme = (ROOT / "README.md").read_text()
    library = readme.split("\n## The library\n")[1].split("\n## ")[0]
    listed = re.findall(r"^\| `(dyntemp/[^`]+)` \|", library, re.M)
    modules = [p.relative_to(ROOT).as_posix() for p in (ROOT / "dyntemp").glob("*.py")]
    packages = [f"dyntemp/{p.parent.name}/" for p in (ROOT / "dyntemp").glob("*/__init__.py")]
    assert len(listed) == len(set(listed)), "a module listed twice"
    assert set(listed) == set(modules + packages)


def _internal_imports() -> dict[str, set[str]]:
    """Each module of ``dyntemp`` and the package's modules it imports anywhere in its code,
    at the top or inside a function (``from dyntemp import name`` of a name that is no
    module depends on the package's ``__init__``)."""
    package = ROOT / "dyntemp"
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in package.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in _import_statements(path):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name in modules}
            elif node.module in modules:
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in modules else node.module)
        graph[name] = found - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, as the modules along it, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return [*path[path.index(child) :], child]
            if child not in state and (found := visit(child, [*path, child])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_imports_go_one_way():
    graph = _internal_imports()
    assert "dyntemp.step" in graph["dyntemp.train"]  # the scan sees the package's imports
    assert "dyntemp.step" in graph["dyntemp.bench.train"]  # also those inside a function
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
