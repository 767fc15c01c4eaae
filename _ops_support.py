"""What the custom Op families of gpu_ops share: their float dtype, the cache salt of their Numba code, and
registering a Numba implementation.

The Numba kernels use no Numba disk cache (cache=True): Numba's cache entries name the importing module, a
checkout's modules can be imported under two names (top level and as the package gru4rec), and a process
that imported them the other way then fails to load the entry. PyTensor caches the compiled graphs that
call them, under keys salted with the module's code and name for the same reason (source_salt).
"""
import hashlib
import sys
import types

FLOAT = 'float32'


def source_salt(module_name):
    """An integer that changes whenever the code of the imported module `module_name` changes. PyTensor caches
    compiled Numba code on disk under a key made of the Op class and its props only; the salt keeps a cached
    kernel from outliving its code. It is computed from the code as imported (the bytecode, names and
    constants of the module's functions and methods, and its plain constants), not from the file, which
    may have been edited since: a long-running process that still runs the old code must not store it under
    the new code's key (that once poisoned the cache for every later run). It also differs by the name the
    module was imported under: the cached code refers to the module by name, and a process that imported it
    the other way (top level vs package) could not load it."""
    h = hashlib.sha256(module_name.encode())

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
                h.update(name.encode())
                add(member)
        elif isinstance(obj, (int, float, str, bytes, tuple, frozenset)):
            add_const(obj)

    for name, obj in sorted(vars(sys.modules[module_name]).items()):
        if getattr(getattr(obj, '__wrapped__', obj), '__module__', module_name) == module_name and not name.startswith('__'):
            h.update(name.encode())
            add(obj)
    return int(h.hexdigest()[:12], 16)


def register_numba(op_class, funcify):
    """Make funcify(op, node) -> (Numba function, cache-key salt) op_class's Numba implementation; without
    Numba, nothing (the Op's perform or plain graph runs instead)."""
    try:
        from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key
    except ImportError:
        return
    register_funcify_default_op_cache_key(op_class)(funcify)
