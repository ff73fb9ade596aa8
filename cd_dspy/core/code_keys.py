"""Keys of code and of the values it holds: what `keys.program_key` and `keys.metric_key` hash besides DSPy state.

`CodeKeyer` turns a function, class or value into JSON-able data that is the same in every process that runs the
same code on the same values, and never holds a memory address (a default `repr` such as `<Foo object at 0x...>`
would make every rerun look new). What it covers:

- user code (anything not under the standard library or site-packages: your scripts, notebooks, exec'd code,
  editable installs): each function by its compiled code (bytecode, names and constants, nested functions and
  lambdas included; not comments, formatting or line numbers; the code that runs, even if its file was edited
  since it was imported), its closure cell values and default arguments, and the globals it references (its
  code's names looked up in its module's globals: helper functions and classes, constants, objects), followed
  `HELPER_DEPTH` references deep; each class by its methods (as functions), docstring and plain-data class
  attributes (others by their type);
- library code (DSPy, the standard library, other installed packages): its qualified name and its package's
  version, never its code;
- values: plain data by value (sets sorted), containers item by item, LMs by `keys.lm_state` (no secrets),
  modules by name, other objects by their class and a `repr` free of addresses, else by their class and
  attributes (`OBJECT_DEPTH` deep); locks and bare `object()` sentinels by their type.

What it cannot key (an object with a default `repr` and no attributes, such as a client with `__slots__` or a C
extension object, or one nested deeper than `OBJECT_DEPTH`) is listed in `unkeyed`: the caller decides (a metric's
key becomes unique to the process, a program's holds the object's type only). Not followed at all: modules
(`helpers.fn()` through a module attribute is keyed as the name `helpers`), attributes read off objects at run
time beyond what their `repr` or `__dict__` shows, files a function reads, external services. The code of a
library (and so DSPy's) is keyed by its version only: an edited installed package is not seen.
"""

from __future__ import annotations

import functools
import hashlib
import json
import site
import sys
import sysconfig
import types
from typing import Any

import dspy
from dspy.primitives.base_module import BaseModule

from cd_dspy.core.lm_state import lm_state

HELPER_DEPTH = 2  # globals are followed from the keyed callable and from the user functions it references
OBJECT_DEPTH = 3  # attributes of objects (with default reprs) are followed this many levels
_ADDRESS = " at 0x"  # how CPython's default reprs show an address
_LIBRARY_DIRS = tuple(sorted({p for p in (*(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib",
                                                                                   "purelib", "platlib")),
                                          *site.getsitepackages(), site.getusersitepackages()) if p}))


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _sorted(items: list[Any]) -> list[Any]:
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True, default=str))


def is_library(obj: Any) -> bool:
    """Whether function or class `obj` comes from the standard library or an installed package (not user code)."""
    module = getattr(obj, "__module__", None) or ""
    if module == "builtins" or module.split(".")[0] in sys.builtin_module_names:
        return True
    code = getattr(obj, "__code__", None)
    path = code.co_filename if code is not None else getattr(sys.modules.get(module), "__file__", None)
    return bool(path) and str(path).startswith(_LIBRARY_DIRS)


def library_version(obj: Any) -> str | None:
    """The `__version__` of the package `obj` comes from (None for the standard library)."""
    top = (getattr(obj, "__module__", None) or "").split(".")[0]
    return getattr(sys.modules.get(top), "__version__", None)


@functools.lru_cache(maxsize=4096)
def code_key(code: types.CodeType) -> str:
    """A hash of what a code object runs: bytecode, names, constants and nested code (lambdas, comprehensions,
    inner functions); not its line numbers or file name. The running code, not the file on disk (edited since?)."""
    consts = []
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            consts.append(code_key(const))
        elif isinstance(const, frozenset):  # `x in {"a", "b"}`: iteration order varies between processes
            consts.append(sorted(map(repr, const)))
        else:
            consts.append(repr(const))
    shape = [code.co_name, code.co_code.hex(), code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
             code.co_argcount, code.co_kwonlyargcount, code.co_flags, consts]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()


def _function_of(value: Any) -> types.FunctionType | None:
    """The plain function behind a class attribute (a method, staticmethod, classmethod or property getter)."""
    value = getattr(value, "__func__", None) or getattr(value, "fget", None) or value
    return value if isinstance(value, types.FunctionType) else None


def is_plain(value: Any) -> bool:
    """Whether `value` is plain data: None, bools, numbers, strings, bytes, and containers of them."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return True
    if isinstance(value, list | tuple | set | frozenset):
        return all(map(is_plain, value))
    return isinstance(value, dict) and all(is_plain(k) and is_plain(v) for k, v in value.items())


def global_names(code: types.CodeType) -> set[str]:
    """Every name the code (and the functions, lambdas and comprehensions nested in it) may read globally."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= global_names(const)
    return names


class CodeKeyer:
    """Walks functions, classes and values into address-free data; `unkeyed` lists what it could not key."""

    def __init__(self) -> None:
        self.unkeyed: list[str] = []
        self._path: set[int] = set()  # ids of the containers being walked: a cycle is keyed by name, not walked
        self._classes: dict[tuple[int, int], Any] = {}  # (class id, depth) -> its key, for many instances of one

    def value(self, obj: Any, where: str, depth: int = 0) -> Any:
        """`obj` as data (`where` names it in `unkeyed`; `depth` counts helper and attribute hops so far)."""
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        if isinstance(obj, bytes | bytearray):
            return ["bytes", hashlib.sha256(obj).hexdigest()]
        if id(obj) in self._path:
            return ["cycle", _name(obj) if isinstance(obj, type | types.FunctionType) else _name(type(obj))]
        self._path.add(id(obj))
        try:
            return self._walk(obj, where, depth)
        finally:
            self._path.discard(id(obj))

    def _walk(self, obj: Any, where: str, depth: int) -> Any:
        if isinstance(obj, list | tuple):
            return [type(obj).__name__, [self.value(x, f"{where}[{i}]", depth) for i, x in enumerate(obj)]]
        if isinstance(obj, dict):
            return ["dict", _sorted([[self.value(k, where, depth), self.value(v, f"{where}[{k!r}]", depth)]
                                     for k, v in obj.items()])]
        if isinstance(obj, set | frozenset):
            return ["set", _sorted([self.value(x, where, depth) for x in obj])]
        if isinstance(obj, types.ModuleType):
            return ["module", obj.__name__]
        if isinstance(obj, type):
            return self.class_key(obj, where, depth)
        if isinstance(obj, types.FunctionType):
            return self.function_key(obj, where, depth)
        if isinstance(obj, types.MethodType):
            return ["method", self.value(obj.__func__, where, depth), self.value(obj.__self__, where, depth)]
        if isinstance(obj, functools.partial):
            return ["partial", self.value(obj.func, where, depth), self.value(obj.args, where, depth),
                    self.value(obj.keywords, where, depth)]
        if isinstance(obj, types.BuiltinFunctionType | types.MethodWrapperType | types.WrapperDescriptorType
                      | types.MethodDescriptorType):
            owner = getattr(obj, "__self__", None)
            bound = None if owner is None or isinstance(owner, types.ModuleType) else self.value(owner, where, depth)
            return ["builtin", _name(obj), bound]
        if isinstance(obj, dspy.BaseLM):
            return ["lm", lm_state(obj)]
        if isinstance(obj, dspy.Example):  # its repr shows its input keys as a set, in a per-process order
            try:
                inputs = sorted(obj.inputs().keys())
            except ValueError:  # no input keys were set (dspy.Example.inputs() raises then)
                inputs = []
            return ["example", self.value(obj.toDict(), where, depth), inputs]
        if isinstance(obj, BaseModule):  # a program or step: `keys.program_key` keys it, not the code walk
            return ["dspy module", _name(type(obj))]
        return self.object_key(obj, where, depth)

    def object_key(self, obj: Any, where: str, depth: int) -> Any:
        """An instance: its class, then its `repr` where free of addresses, else its attributes."""
        cls = type(obj)
        kind = self.class_key(cls, where, depth)
        if cls.__repr__ is not object.__repr__:
            try:
                text = repr(obj)
            except Exception:  # noqa: BLE001 - a broken __repr__ only means this way is closed
                text = _ADDRESS
            if _ADDRESS not in text:
                return ["object", kind, text]
        if cls is object or cls.__module__ in ("_thread", "threading"):  # a sentinel or a lock: no state to key
            return ["object", kind]
        attributes = getattr(obj, "__dict__", None)
        if isinstance(attributes, dict) and depth < OBJECT_DEPTH:
            return ["object", kind, {k: self.value(v, f"{where}.{k}", depth + 1) for k, v in attributes.items()}]
        self.unkeyed.append(f"{where} (a {cls.__qualname__} with no address-free repr or plain attributes)")
        return ["unkeyed", kind]

    def class_key(self, cls: type, where: str, depth: int) -> Any:
        """A library class by name and version; a user class by its methods (`function_key`), its docstring and
        its plain-data class attributes (other class attributes by their type)."""
        if is_library(cls):
            return ["library", _name(cls), library_version(cls)]
        if (id(cls), depth) in self._classes:  # the class stays alive while this keyer walks
            return self._classes[id(cls), depth]
        self._classes[id(cls), depth] = ["cycle", _name(cls)]  # a method that references its own class
        members = {}
        for name, value in vars(cls).items():
            function = _function_of(value)
            if function is not None:
                members[name] = [type(value).__name__,
                                 self.function_key(function, f"{where} → {cls.__qualname__}.{name}", depth)]
            elif name == "__doc__" or not name.startswith("__"):
                members[name] = self.value(value, where, depth) if is_plain(value) else ["type", _name(type(value))]
        self._classes[id(cls), depth] = ["class", _name(cls), [_name(base) for base in cls.__bases__], members]
        return self._classes[id(cls), depth]

    def function_key(self, fn: types.FunctionType, where: str, depth: int) -> Any:
        """A library function by name and version; a user function by its compiled code (`code_key`), closure
        values, defaults and (`HELPER_DEPTH` deep) the globals its code names."""
        if is_library(fn):
            return ["library", _name(fn), library_version(fn)]
        key: dict[str, Any] = {"name": _name(fn), "code": code_key(fn.__code__)}
        if fn.__defaults__:
            key["defaults"] = self.value(fn.__defaults__, f"{where} (defaults)", depth)
        if fn.__kwdefaults__:
            key["kwdefaults"] = self.value(fn.__kwdefaults__, f"{where} (defaults)", depth)
        if fn.__closure__:
            key["closure"] = {name: self.value(_cell(cell), f"{where} → closure value {name!r}", depth)
                              for name, cell in zip(fn.__code__.co_freevars, fn.__closure__, strict=True)}
        if depth < HELPER_DEPTH:
            key["globals"] = {name: self.value(fn.__globals__[name], f"{where} → global {name!r}", depth + 1)
                              for name in sorted(global_names(fn.__code__)) if name in fn.__globals__}
        return key


def _cell(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a cell not filled yet (a name assigned after the inner function was made)
        return ["empty cell"]
