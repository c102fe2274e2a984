"""The package's shape: three layers (core at the root, cli/, mini/) and no import cycle anywhere,
counting the imports made inside functions, which hide a cycle from Python but not from a reader."""
import ast
import os
from typing import Dict, List, Set

import modelscope_sdxl

PACKAGE_DIR = os.path.dirname(modelscope_sdxl.__file__)
PACKAGE = 'modelscope_sdxl'


def _modules() -> Dict[str, str]:
    """Dotted module name -> file, for every .py file of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith('.py'):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(PACKAGE_DIR))[:-3]
                parts = rel.split(os.sep)
                if parts[-1] == '__init__':
                    parts.pop()
                found['.'.join(parts)] = os.path.join(folder, name)
    return found


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports anywhere in its file (top level or inside functions)."""
    modules = _modules()
    graph: Dict[str, Set[str]] = {}
    for module, path in modules.items():
        is_package = path.endswith('__init__.py')
        package = module if is_package else module.rsplit('.', 1)[0]
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split('.')
                    base = base[:len(base) - (node.level - 1)]
                    source = '.'.join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ''
                # `from pkg import sub` imports the submodule; `from mod import name` the module.
                targets = [f'{source}.{a.name}' if f'{source}.{a.name}' in modules else source for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != module)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_cycle_finder_finds_a_cycle_through_an_import_inside_a_function(tmp_path):
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) == []


def test_the_graph_sees_relative_imports_inside_functions():
    graph = import_graph()
    # cli/sources.py imports the mini model's folders and the tiny builder only inside functions.
    assert {'modelscope_sdxl.mini', 'modelscope_sdxl.mini.sdxl_folders', 'modelscope_sdxl.hub'} <= \
        graph['modelscope_sdxl.cli.sources']
    assert 'modelscope_sdxl.cli' in graph['modelscope_sdxl.cli.plugin']  # `from . import ...`


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) == []


CORE_PACKAGES = ('modelscope_sdxl.loading', 'modelscope_sdxl.stages', 'modelscope_sdxl.inputs')
# The old import paths (batch, mini_model) and `python -m` point into the other layers.
ENTRY_POINTS = ('modelscope_sdxl.batch', 'modelscope_sdxl.mini_model', 'modelscope_sdxl.__main__')


def _is_core(module: str) -> bool:
    if module in ENTRY_POINTS or module.startswith(('modelscope_sdxl.cli', 'modelscope_sdxl.mini')):
        return False
    return module.count('.') == 1 or module.startswith(CORE_PACKAGES)


def test_the_core_does_not_import_the_command_line_or_the_mini_model():
    graph = import_graph()
    core = [m for m in graph if _is_core(m)]
    assert 'modelscope_sdxl.pipeline' in core and 'modelscope_sdxl.loading.networks' in core
    for module in core:
        outside = {t for t in graph[module] if t.startswith(('modelscope_sdxl.cli', 'modelscope_sdxl.mini'))}
        assert not outside, f'{module} imports {sorted(outside)}'


def test_the_package_root_shows_the_core_in_few_small_modules():
    root = sorted(f for f in os.listdir(PACKAGE_DIR) if f.endswith('.py'))
    assert len(root) <= 16, root
    assert {'cli', 'mini', 'loading', 'stages', 'inputs'} <= set(os.listdir(PACKAGE_DIR))
    long = {m: n for m, path in _modules().items() if (n := sum(1 for _ in open(path, encoding='utf-8'))) > 450}
    assert long == {}, f'modules over 450 lines: {long}'
