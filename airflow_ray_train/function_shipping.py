"""Ship a TaskFlow training function without its DAG file.

The decorated function runs on the Ray cluster, which has neither Airflow nor the DAG file. What it reads from
outside itself is found by scope: ``symtable`` on its source gives the names, and each is looked up where
Python would look it up (the closure of an enclosing ``@dag`` function, then the DAG file's globals, then
builtins), so a local that shadows a global, a constant under ``with DAG(...)`` or an import under ``try:``
all come out right. A generated module then binds each name:

- a module: ``import x as name``; a function or class another module defines: ``from m import name``;
- a function or class of the DAG file or of the enclosing function: its source, resolved the same way;
- any other value: its literal, or its pickle where it has none (the value the DAG computed, as Ray ships a
  remote function's globals).

What cannot travel (an Airflow object, a value that cannot be pickled or whose class lives in the DAG file, a
relative import, a name defined nowhere) raises ``CodeLookupError`` naming it, before anything is submitted.
"""

from __future__ import annotations

import ast
import builtins
import copy
import hashlib
import inspect
import pickle
import pickletools
import symtable
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_ray_train.packaging import PROVIDER_PACKAGE, CodeLookupError, Package, build_zip

#: Annotations stay strings in the generated module: a name used only in one need not travel.
_FUTURE = "from __future__ import annotations\n"
_LOADS = "_pickle_loads"
#: A value bigger than this once written out does not belong in a code package.
MAX_VALUE_BYTES = 1024 * 1024
_LITERAL_TYPES = (type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set)
_IMPORTS, _VALUES, _DEFINITIONS = range(3)
_MISSING = object()


@dataclass
class _Binding:
    """One top-level statement of the generated module: ``code`` binds ``name``."""

    code: str
    kind: int
    #: Names the statement needs when it runs (decorators, base classes, defaults): bound before it.
    eager: frozenset[str] = frozenset()
    modules: set[str] = field(default_factory=set)


def _describe(obj: Any) -> str:
    return str(getattr(obj, "__qualname__", obj)).replace(".<locals>", "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _from_airflow(module: str) -> bool:
    top = module.split(".")[0]
    return top in ("airflow", PROVIDER_PACKAGE)


def _literal(value: Any) -> str | None:
    """``repr(value)`` where it reads back as an equal value of the same type (plain data), else None."""
    if type(value) not in _LITERAL_TYPES:
        return None
    text = repr(value)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return text if same else None


def _unwrapped(value: Any) -> Any:
    try:
        return inspect.unwrap(value)
    except ValueError:  # a __wrapped__ chain that loops
        return value


def _pickled_modules(data: bytes) -> set[str]:
    """The modules a pickle imports when it is loaded (protocol 3 names them in ``GLOBAL`` opcodes)."""
    return {str(arg).split(" ")[0] for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


class _Shipment:
    """The generated module for ``func``, built by binding each name it needs, recursively."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.bindings: dict[str, _Binding] = {}
        self.bound: dict[str, Any] = {}
        self.users: dict[str, str] = {}
        self._trees: dict[str, ast.Module] = {}

    # -- what a name stands for -------------------------------------------------------------------------------

    def bind(self, name: str, value: Any, user: str) -> None:
        """Make ``name`` mean ``value`` in the generated module (``user`` is who needs it, for messages)."""
        if name in self.bound:
            known = self.bound[name]
            if known is value or (_literal(value) is not None and type(known) is type(value) and known == value):
                return
            raise CodeLookupError(
                f"{user} uses {name!r} ({_short(value)}), and {self.users[name]}, shipped with it, uses a different "
                f"{name!r} ({_short(known)}); the generated module can hold only one. Fix: rename one of them."
            )
        self.bound[name], self.users[name] = value, user
        if isinstance(value, types.ModuleType):
            self.bindings[name] = self._module(name, value, user)
        elif (home := self._importable_home(value)) is not None:
            self.bindings[name] = self._import(name, value, home, user)
        elif inspect.isclass(value) or inspect.isfunction(_unwrapped(value)):
            self.bindings[name] = self.definition(name, value)
        else:
            self.bindings[name] = self._value(name, value, user)

    def _local_module(self, module: str) -> bool:
        """Whether ``module`` exists only where Airflow runs (the DAG file, ``__main__``)."""
        return module in (self.func.__module__, "__main__")

    def _importable_home(self, value: Any) -> tuple[str, str] | None:
        """``(module, qualname)`` when ``value`` can be imported by name from a module the cluster can have."""
        module_name = getattr(value, "__module__", None)
        qualname = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
        if not isinstance(module_name, str) or not isinstance(qualname, str) or "<locals>" in qualname:
            return None
        module = sys.modules.get(module_name)
        if module is None or self._local_module(module_name):
            return None
        target: Any = module
        for part in qualname.split("."):
            target = getattr(target, part, _MISSING)
        return (module_name, qualname) if target is value else None

    def _module(self, name: str, module: types.ModuleType, user: str) -> _Binding:
        if _from_airflow(module.__name__):
            raise CodeLookupError(
                f"{user} uses {name!r}, the module {module.__name__}, which comes from Airflow; the Ray cluster "
                "has no Airflow. Fix: use only non-Airflow code inside the training function."
            )
        if self._local_module(module.__name__) or module.__spec__ is None:
            raise CodeLookupError(
                f"{user} uses {name!r}, the module {module.__name__}, which exists only where Airflow runs. "
                "Fix: move what it needs into a module beside the DAG file and import that."
            )
        code = f"import {module.__name__}" + (f" as {name}" if name != module.__name__ else "")
        return _Binding(code, _IMPORTS, modules={module.__name__.split(".")[0]})

    def _import(self, name: str, value: Any, home: tuple[str, str], user: str) -> _Binding:
        module, qualname = home
        if _from_airflow(module):
            raise CodeLookupError(
                f"{user} uses {name!r} ({module}.{qualname}), which comes from Airflow; the Ray cluster has no "
                "Airflow. Fix: use only non-Airflow code inside the training function."
            )
        first, _, rest = qualname.partition(".")
        code = f"from {module} import {first}" + (f" as {name}" if name != first else "")
        if rest:
            code += f"\n{name} = {name}.{rest}"
        return _Binding(code, _IMPORTS, modules={module.split(".")[0]})

    def _value(self, name: str, value: Any, user: str) -> _Binding:
        type_name = f"{type(value).__module__}.{type(value).__qualname__}"
        kind = f"{'an' if type_name[0] in 'aeiou' else 'a'} {type_name}"
        if _from_airflow(type(value).__module__):
            raise CodeLookupError(
                f"{user} uses {name!r}, {kind}: an Airflow object, and the Ray cluster has no Airflow. Fix: pass "
                "what the function needs through its config, e.g. train(config=upstream_task())."
            )
        text = _literal(value)
        modules: set[str] = set()
        if text is None:
            try:
                data = pickle.dumps(value, protocol=3)
            except Exception as exc:  # any pickling failure means the same to the user
                raise CodeLookupError(
                    f"{user} uses {name!r}, {kind}, which cannot travel to the Ray cluster: it cannot be pickled "
                    f"({exc}). Fix: create it inside the function, or pass plain data through the config."
                ) from exc
            modules = _pickled_modules(data)
            blocked = sorted(m for m in modules if self._local_module(m) or _from_airflow(m))
            if blocked:
                where = "the DAG file" if self._local_module(blocked[0]) else f"{blocked[0]}, from Airflow"
                raise CodeLookupError(
                    f"{user} uses {name!r}, {kind}, which needs {where} to be loaded, and the Ray cluster has "
                    "neither Airflow nor the DAG file. Fix: build it inside the function, or move its class to a "
                    "module beside the DAG file."
                )
            self.bindings.setdefault(_LOADS, _Binding(f"from pickle import loads as {_LOADS}", _IMPORTS))
            text = f"{_LOADS}({data!r})"
        if len(text) > MAX_VALUE_BYTES:
            raise CodeLookupError(
                f"{user} uses {name!r}, {kind} of {len(text) / 2**20:.1f} MiB once written out, over the "
                f"{MAX_VALUE_BYTES // 2**20} MiB a value shipped with the code may take. Fix: write it to storage "
                "and read it inside the function, or pass it through the config."
            )
        comment = f"  # {kind}" if modules else ""
        return _Binding(f"{name} = {text}{comment}", _VALUES, modules={m.split(".")[0] for m in modules})

    # -- definitions, from their source ------------------------------------------------------------------------

    def definition(self, name: str, obj: Any, *, strip_decorators: bool = False) -> _Binding:
        """The source of a function or class (decorators stripped for the task's own function), bound as
        ``name``, after binding everything it reads from outside itself."""
        target = obj if inspect.isclass(obj) else _unwrapped(obj)
        node, filename = self._node(target)
        node = copy.deepcopy(node)  # renamed and stripped below; the parsed file stays as it is
        user = _describe(target)
        if isinstance(node, ast.Lambda):
            code = f"{name} = {ast.unparse(node)}"
        else:
            node.name = name
            if strip_decorators:
                node.decorator_list = []
            code = ast.unparse(node)
        modules = self._imports_inside(node, user)
        reads, eager, assigned = _outside_names(code, filename, user)
        closure, namespace = _namespaces(target)
        for needed in sorted(reads):
            if needed.startswith("__") and needed.endswith("__"):
                continue  # __name__, __file__, ...: the generated module has its own
            if needed in closure:
                try:
                    value = closure[needed].cell_contents
                except ValueError:
                    raise CodeLookupError(
                        f"{user} uses {needed!r}, which its enclosing function never assigns. "
                        f"Fix: assign {needed!r} before the task is defined."
                    ) from None
            elif needed in namespace:
                value = namespace[needed]
            elif hasattr(builtins, needed) or needed in assigned:
                continue
            else:
                raise CodeLookupError(
                    f"{user} uses {needed!r}, which is defined nowhere it can see (not in its enclosing "
                    "function, the DAG file, or builtins). Fix: define or import it."
                )
            self.bind(needed, value, user)
        return _Binding(code, _DEFINITIONS, eager=frozenset(eager), modules=modules)

    def _tree(self, filename: str) -> ast.Module:
        if filename not in self._trees:
            try:
                self._trees[filename] = ast.parse(Path(filename).read_text(encoding="utf-8"), filename)
            except (OSError, SyntaxError) as exc:
                raise CodeLookupError(f"cannot read the source {filename} to ship it: {exc}") from exc
        return self._trees[filename]

    def _node(self, obj: Any) -> tuple[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda, str]:
        """The syntax node that defines ``obj``, found in its file by name and first line."""
        try:
            if inspect.isclass(obj):
                filename, line, name = inspect.getsourcefile(obj), inspect.getsourcelines(obj)[1], obj.__name__
            else:
                code = obj.__code__
                filename, line, name = code.co_filename, code.co_firstlineno, code.co_name
        except (OSError, TypeError) as exc:
            raise CodeLookupError(
                f"cannot find the source of {_describe(obj)} ({exc}). Fix: define it in a .py file."
            ) from exc
        if filename is None or not Path(filename).is_file():
            raise CodeLookupError(f"cannot find the source of {_describe(obj)}. Fix: define it in a .py file.")
        found: list[Any] = []
        for node in ast.walk(self._tree(filename)):
            if isinstance(node, ast.Lambda) and name == "<lambda>" and node.lineno == line:
                found.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
                if line in (node.lineno, min([node.lineno, *(d.lineno for d in node.decorator_list)])):
                    found.append(node)
        if len(found) != 1:
            raise CodeLookupError(
                f"cannot tell which definition in {filename}, line {line} is {_describe(obj)}. "
                "Fix: define it with `def` on a line of its own."
            )
        return found[0], filename

    def _imports_inside(self, node: ast.AST, user: str) -> set[str]:
        """The top-level modules imported inside a definition; a relative import cannot work there."""
        modules = set()
        for child in ast.walk(node):
            if isinstance(child, ast.ImportFrom) and child.level:
                raise CodeLookupError(
                    f"{user} imports relatively (`{ast.unparse(child)}`), but it runs on the cluster from a "
                    "generated module outside any package. Fix: import absolutely, e.g. "
                    f"`from my_package{'.' + child.module if child.module else ''} import ...`."
                )
            if isinstance(child, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in child.names}
            elif isinstance(child, ast.ImportFrom) and child.module:
                modules.add(child.module.split(".")[0])
        return modules

    # -- the module ---------------------------------------------------------------------------------------------

    def ordered(self) -> list[str]:
        """The statements: imports, then values, then definitions, each after the definitions it needs."""
        definitions = [n for n, b in self.bindings.items() if b.kind == _DEFINITIONS]
        done: list[str] = []

        def visit(name: str, path: frozenset[str]) -> None:
            if name in done or name in path:
                return
            for needed in sorted(self.bindings[name].eager & set(definitions)):
                visit(needed, path | {name})
            done.append(name)

        for name in definitions:
            visit(name, frozenset())
        first = sorted((b.kind, b.code) for b in self.bindings.values() if b.kind != _DEFINITIONS)
        return [code for _, code in first] + [self.bindings[name].code for name in done]


def _outside_names(code: str, filename: str, user: str) -> tuple[set[str], set[str], set[str]]:
    """From a definition's source: the names it reads from outside itself, those read when the definition
    runs (decorators, defaults, base classes, a class body), and the globals it assigns itself."""
    try:
        top = symtable.symtable(_FUTURE + code, filename, "exec")
    except SyntaxError as exc:
        raise CodeLookupError(
            f"{user} cannot run apart from its enclosing function: {exc.msg}. Fix: return values instead of "
            "assigning the enclosing function's variables (nonlocal)."
        ) from exc
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    eager = {s.get_name() for s in top.get_symbols() if s.is_referenced()}
    reads, assigned = set(eager), set()
    stack = [(child, child.get_type() == "class") for child in top.get_children()]
    while stack:
        table, runs_now = stack.pop()
        for symbol in table.get_symbols():
            if symbol.is_global() and symbol.is_referenced():
                reads.add(symbol.get_name())
                if runs_now:
                    eager.add(symbol.get_name())
            if symbol.is_declared_global() and symbol.is_assigned():
                assigned.add(symbol.get_name())
        stack += [(child, False) for child in table.get_children()]
    return reads - defined, eager - defined, assigned


def _namespaces(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Where the names a function or class reads live: its closure cells, and its module's globals."""
    functions = [obj]
    if inspect.isclass(obj):
        functions = []
        for member in vars(obj).values():
            for candidate in (member, getattr(member, "__func__", None), getattr(member, "fget", None)):
                if inspect.isfunction(candidate):
                    functions.append(candidate)
    closure: dict[str, Any] = {}
    for function in functions:
        closure.update(zip(function.__code__.co_freevars, function.__closure__ or (), strict=True))
    module = sys.modules.get(obj.__module__)
    namespace = obj.__globals__ if inspect.isfunction(obj) else vars(module) if module else {}
    return closure, namespace


def function_package(func: Callable[..., Any]) -> tuple[Package, str, list[str]]:
    """Ship ``func`` without its DAG file (see the module docstring).

    Returns the package, the ``module:function`` path to run, and the top-level modules the generated code
    imports (local ones among them must be shipped too: see ``packaging.code_package``).
    """
    if not inspect.isfunction(func):
        raise CodeLookupError(f"{func!r} is not a function defined with `def`. Fix: decorate a `def` function.")
    shipment = _Shipment(func)
    shipment.bound[func.__name__] = func
    shipment.bindings[func.__name__] = shipment.definition(func.__name__, func, strip_decorators=True)
    source_file = Path(func.__code__.co_filename).name
    header = f'"""Generated by airflow-ray-train from {source_file}:{_describe(func)}."""\n'
    code = header + _FUTURE + "\n".join(shipment.ordered()) + "\n"
    digest = hashlib.sha256(code.encode()).hexdigest()[:16]
    module_name = f"_airflow_ray_train_fn_{digest}"
    compile(code, f"{module_name}.py", "exec")
    modules = set().union(*(b.modules for b in shipment.bindings.values()))
    package = build_zip(f"{func.__code__.co_filename}:{_describe(func)}", [(f"{module_name}.py", code)])
    return package, f"{module_name}:{func.__name__}", sorted(modules - {"__future__", "builtins"})
