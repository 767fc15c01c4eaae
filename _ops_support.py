"""What the custom Op families of gpu_ops share: their float dtype, the cache salt of their Numba code, and
registering a Numba implementation.

The Numba kernels use no Numba disk cache (cache=True): Numba's cache entries name the importing module, a
checkout's modules can be imported under two names (top level and as the package gru4rec), and a process
that imported them the other way then fails to load the entry. PyTensor caches the compiled graphs that
call them, under keys salted with the module's source and name for the same reason (source_salt).
"""
import hashlib
import sys

FLOAT = 'float32'


def source_salt(module_name):
    """An integer that changes whenever the source file of the (imported) module `module_name` changes.
    PyTensor caches compiled Numba code on disk under a key made of the Op class and its props only; the salt
    keeps a cached kernel from outliving its source. It also differs by the name the module was imported
    under: the cached code refers to the module by name, and a process that imported it the other way (top
    level vs package) could not load it."""
    with open(sys.modules[module_name].__file__, 'rb') as f:
        return int(hashlib.sha256(f.read() + module_name.encode()).hexdigest()[:12], 16)


def register_numba(op_class, funcify):
    """Make funcify(op, node) -> (Numba function, cache-key salt) op_class's Numba implementation; without
    Numba, nothing (the Op's perform or plain graph runs instead)."""
    try:
        from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key
    except ImportError:
        return
    register_funcify_default_op_cache_key(op_class)(funcify)
