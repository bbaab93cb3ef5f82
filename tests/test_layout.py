"""The package's layout: no import circles, each stage in a module named for it, one source of
defaults, and no references to documents outside the repository."""
import ast
import dataclasses
import pathlib
import re

import pytest

from refine_jax import cli, pipeline, settings

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "refine_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    """{module: the refine_jax modules it imports anywhere in its file (lazy imports too)}.
    `from pkg import name` is an edge to pkg.name when that is a module, else to pkg."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    target = f"{node.module}.{a.name}"
                    edges.add(target if target in files else node.module)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 50 and "refine_jax.stages.label" in graph["refine_jax.pipeline"]
    assert cycles(graph) == []


def test_models_import_nothing_above_them():
    for name, edges in import_graph().items():
        if name.startswith("refine_jax.models"):
            assert all(e.startswith("refine_jax.models") for e in edges), (name, edges)


def test_each_stage_runs_from_a_module_named_for_it():
    for name, run in pipeline.stages().items():
        module = run.__module__
        expected = "refine_jax.demo.stages" if name in ("generate", "pretrain") else \
            f"refine_jax.stages.{'evaluate' if name == 'eval' else name}"
        assert module == expected and run.__name__ in ("run", name), (name, module)


def _recorded_sections(monkeypatch, config_file, preset):
    """The config of a file and preset, and the changes each of its `settings.section` calls named."""
    calls = []
    real = settings.section

    def recording(cls, **changes):
        calls.append((cls, changes))
        return real(cls, **changes)
    monkeypatch.setattr(settings, "section", recording)
    config = cli.load_config(f"{config_file}{':' + preset if preset else ''}")
    return config, calls


PRESETS = {"configs/raft.py": ("", "pretrain", "sintel", "runlocal"),
           "configs/pips.py": ("", "crohd", "horse10", "tapvid_davis", "pretrain", "runlocal")}


@pytest.mark.parametrize("config_file,preset", [(f, p) for f, ps in PRESETS.items() for p in ps])
def test_config_sections_hold_exactly_the_settings_fields(monkeypatch, config_file, preset):
    """Every stage's section in every preset has the settings dataclass's fields, no more, no fewer
    (a field a config lacked fell to a default it did not show; an extra one is refused at run time)."""
    config, _ = _recorded_sections(monkeypatch, config_file, preset)
    for name, cls in settings.SECTIONS.items():
        assert set(config[name]) == {f.name for f in dataclasses.fields(cls)}, (config_file, preset, name)
        settings.from_section(cls, config[name], name)


@pytest.mark.parametrize("config_file", sorted(PRESETS))
def test_config_defaults_are_the_settings_defaults(monkeypatch, config_file):
    """In a config file's default (no preset), every value of a stage's section is the settings
    dataclass's default unless the file names it as a change: a config cannot silently disagree
    with the defaults that a config built elsewhere (or an older saved tree) reads."""
    config, calls = _recorded_sections(monkeypatch, config_file, "")
    for name, cls in settings.SECTIONS.items():
        changed = set().union(*[set(ch) for c, ch in calls if c is cls])
        defaults = dataclasses.asdict(cls())
        for key, value in config[name].items():
            if key not in changed:
                assert value == defaults[key], f"{config_file}: {name}.{key} = {value!r}, default {defaults[key]!r}"


def test_section_refuses_an_unknown_field():
    with pytest.raises(ValueError, match="TrainConfig has no field stepz"):
        settings.section(settings.TrainConfig, stepz=3)


def test_no_references_to_documents_outside_the_repository():
    outside = ("spec" + "/method", "spec" + "/architectures", "../" + "shared")  # split: this file is scanned too
    pattern = re.compile("|".join(map(re.escape, outside)) + r"|\bQ\d+\b")
    hits = []
    for folder in ("refine_jax", "configs", "tests", "docs", "launch"):
        for p in (ROOT / folder).rglob("*"):
            if p.suffix in (".py", ".md", ".sh"):
                hits += [f"{p.relative_to(ROOT)}:{i + 1}" for i, line in enumerate(p.read_text().splitlines())
                         if pattern.search(line)]
    hits += [f"README.md:{i + 1}" for i, line in enumerate((ROOT / "README.md").read_text().splitlines())
             if pattern.search(line)]
    assert hits == []
