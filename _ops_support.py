"""What the custom Op families of gpu_ops share: their float dtype, the Numba decorator of their kernels,
registering a Numba implementation with its disk-cache key, and the base of Ops without a gradient.

PyTensor caches the compiled Numba code of a graph on disk (base_compiledir/numba). A checkout's modules are
imported top level (_row_update) and an installed copy's as the package (gru4rec._row_update); the same code
must give the same cache entries either way, so that what one kind of process compiled the other loads:

* the key of a custom Op's code (register_numba) names the Op by its module's package-relative name and its
  class, and is salted with the module's code as imported (source_salt), not with its import name;
* Numba pickles, with every cached function, the Environment (globals) of each function compiled into it,
  by the name of that function's module, and imports that module to load the entry. The kernels are
  therefore compiled from copies of their functions whose globals name no module (njit), as the code
  PyTensor generates from strings is: nothing in a cache entry then refers to the module by name.
"""
import hashlib
import sys
import types

from pytensor.graph.op import Op

FLOAT = 'float32'


def package_relative(module_name):
    """The module's name without the package it was imported in: _row_update for gru4rec._row_update."""
    return module_name.rpartition('.')[2]


def source_salt(module_name):
    """An integer that changes whenever the code of the imported module `module_name` changes. PyTensor caches
    compiled Numba code on disk under a key of the Op and its props only; the salt keeps a cached kernel from
    outliving its code. It is computed from the code as imported (the bytecode, names and constants of the
    module's functions and methods, and its plain constants), not from the file, which may have been edited
    since: a long-running process that still runs the old code must not store it under the new code's key
    (that once poisoned the cache for every later run). It depends on the module's package-relative name but
    not on the package (top level or gru4rec.): the same code gives the same salt whichever way it was
    imported, so a checkout and an installed copy share their cache entries (njit keeps the entries free of
    the import name)."""
    h = hashlib.sha256(package_relative(module_name).encode())

    def add_const(c):   # code objects by content; sets in a fixed order (their repr follows string hashing)
        if isinstance(c, types.CodeType):
            h.update(c.co_code + repr(c.co_names).encode())
            for x in c.co_consts:
                add_const(x)
        elif isinstance(c, (tuple, frozenset)):
            h.update(b'(' if isinstance(c, tuple) else b'{')
            for x in (c if isinstance(c, tuple) else sorted(c, key=repr)):
                add_const(x)
        else:
            h.update(repr(c).encode())

    def add(obj):
        obj = getattr(obj, '__wrapped__', obj)        # functools.cache
        if isinstance(obj, types.FunctionType):
            add_const(obj.__code__)
        elif isinstance(obj, property):
            add(obj.fget)
        elif isinstance(obj, type):
            for name, member in sorted(vars(obj).items()):
                if name != '__module__':              # the import name (the class's code is hashed)
                    h.update(name.encode())
                    add(member)
        elif isinstance(obj, (int, float, str, bytes, tuple, frozenset)):
            add_const(obj)

    for name, obj in sorted(vars(sys.modules[module_name]).items()):
        if getattr(getattr(obj, '__wrapped__', obj), '__module__', module_name) == module_name and not name.startswith('__'):
            h.update(name.encode())
            add(obj)
    return int(h.hexdigest()[:12], 16)


def njit(*, pytensor=False, **options):
    """The decorator of the Numba kernels: numba.njit(**options) (pytensor=True: PyTensor's numba_njit, which
    adds PyTensor's fastmath default and leaves out the Python-callable wrapper) of a copy of the function
    whose globals are its module's without __name__.

    Numba stores, with every cached function, the Environment of each function compiled into it, pickled
    by the name of that function's module (its globals' __name__), and imports that module by that name
    when it loads the entry: an entry compiled by a checkout (_row_update) failed to load in an installed
    copy (gru4rec._row_update), and the reverse. A function whose globals have no __name__ (like the code
    PyTensor generates from strings) has no stored Environment. Compiled code needs its Environment only
    to work with Python objects (object mode, print, exception messages built at run time), which the
    kernels do not do; one that did would fail with Numba's "missing Environment" error after a load, not
    compute anything else. The globals are a copy taken when the kernel is made (Numba freezes global
    values at compile time anyway)."""
    def decorate(fn):
        detached = types.FunctionType(fn.__code__, {k: v for k, v in fn.__globals__.items() if k != '__name__'},
                                      fn.__name__, fn.__defaults__, fn.__closure__)
        detached.__qualname__, detached.__doc__ = fn.__qualname__, fn.__doc__
        detached.__kwdefaults__ = fn.__kwdefaults__
        if pytensor:
            from pytensor.link.numba.dispatch.basic import numba_njit
            return numba_njit(detached, **options)
        import numba
        return numba.njit(**options)(detached)
    return decorate


class NoGradient(Op):
    """An Op through which no gradient flows to any input (a draw from a hash, a shape)."""

    def grad(self, inputs, output_grads):
        from pytensor.gradient import disconnected_type
        return [disconnected_type() for _ in inputs]

    def connection_pattern(self, node):
        return [[False] for _ in node.inputs]


def cache_key(op, salt):
    """PyTensor's disk-cache key of op's Numba code: its class by package-relative module name and qualified
    name (PyTensor's default key uses str(type(op)), which names the package), its props, and the salt of
    its module's code (source_salt)."""
    cls = type(op)
    text = repr((package_relative(cls.__module__), cls.__qualname__, tuple(op._props_dict().items()), salt))
    return hashlib.sha256(text.encode()).hexdigest()


def register_numba(op_class, funcify):
    """Make funcify(op, node) -> (Numba function, source_salt of its module) op_class's Numba implementation,
    cached on disk under cache_key; without Numba, nothing (the Op's perform or plain graph runs instead)."""
    try:
        from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key
    except ImportError:
        return

    def funcify_and_key(op, node=None, **kwargs):
        fn, salt = funcify(op, node=node, **kwargs)
        return fn, cache_key(op, salt)
    register_funcify_and_cache_key(op_class)(funcify_and_key)
