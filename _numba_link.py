"""Numba code libraries optimised and turned into machine code once, by the function Python calls.

PyTensor's Numba backend compiles a graph into nested Numba functions: the graph's function calls one
function per node (each wrapped once more for PyTensor's disk cache), a scan calls its inner graph's
function, whose nodes call their kernels, and so on (13 levels in the training step). Numba compiles every
one of them as if Python could call it: when a function is compiled, the LLVM modules of everything it calls
are linked into its own, the whole module is optimised again and turned into machine code. Each level
therefore re-optimises and re-emits all the code below it; in a cold compile of the quick-start training
step that was 43 of 84 s (benchmarks/compile_profile.py, docs/performance.md), although only the outermost
function's machine code ever runs: a caller inlines or links its own copy of its callees.

install() makes both steps lazy. A library's module passes and machine-code emission run when something
needs a pointer to a function defined in it (a function Python calls, a C callback). A library that is only
ever linked into others is never optimised or emitted by itself; its code is optimised once, inside the
module of the function that is called. The passes and their order are Numba's own; what changes is that
the outer module links its callees' IR before module optimisation instead of after. Every comparison made
gave the same results bit for bit (the quick-start training, and the tests against Numba's eager path).

Two things the eager path did on the side are kept:

* The disk cache: a library cached without machine code is written as LLVM bitcode (Numba's 'bitcode'
  kind), which a later compile links in as before;
* Environments: Numba writes the address of each function's Environment into a global of its module when
  the function is compiled. For a library not yet emitted that global does not exist yet; the address is
  kept and written as soon as a module that defines the global has been emitted.

It changes private methods of Numba's JIT code library, so it checks that they are there (Numba 0.68's
were read) and otherwise does nothing; GRU4REC_NUMBA_EAGER=1 in the environment keeps Numba's own
behaviour (custom_opt.compile_mode calls install() for the Numba backend).
"""
import ctypes
import os
import weakref

_installed = []


def install():
    """Make Numba's JIT libraries lazy in this process (idempotent). Returns whether they are."""
    if _installed:
        return _installed[0]
    from numba.core import codegen
    lib, gen = codegen.JITCodeLibrary, codegen.JITCPUCodegen
    needed = [(lib, name) for name in ('_optimize_final_module', '_finalize_final_module', '_finalize_specific',
                                       '_finalize_dynamic_globals', '_verify_declare_only_symbols',
                                       'get_pointer_to_function', 'serialize_using_object_code')]
    needed += [(gen, 'set_env'), (gen, '_add_module')]
    ok = os.environ.get('GRU4REC_NUMBA_EAGER', '') in ('', '0') and all(hasattr(o, n) for o, n in needed)
    if ok:
        _patch(lib, gen)
    _installed.append(ok)
    return ok


def is_emitted(library):
    """Whether a Numba code library has been turned into machine code (always, for Numba's eager path)."""
    return getattr(library, '_gru4rec_emitted', True)


def _patch(lib, gen):
    optimize = lib._optimize_final_module
    serialize = lib.serialize_using_object_code

    def _optimize_final_module(self):
        # at finalize: postponed to _emit (a library that is only linked into others never needs it)
        self._gru4rec_passes_due = True

    def _finalize_final_module(self):
        self._finalize_dynamic_globals()
        self._verify_declare_only_symbols()
        self._finalized = True
        self._gru4rec_emitted = False
        if getattr(self, '_compiled_object', None) is not None:   # loaded from the disk cache as object code
            _emit(self)

    def _emit(self):
        if is_emitted(self):
            return
        if getattr(self, '_gru4rec_passes_due', False):
            self._gru4rec_passes_due = False
            optimize(self)
            self._final_module.verify()
        self._gru4rec_emitted = True
        # what Numba's _finalize_final_module does after verifying (the attribute is what its object-cache
        # hooks look up, under its name-mangled spelling)
        self._final_module._CPUCodeLibrary__library = weakref.proxy(self)
        cleanup = self._codegen._add_module(self._final_module)
        if cleanup:
            weakref.finalize(self, cleanup)
        self._finalize_specific()
        _write_pending_environments(self._codegen)

    def get_pointer_to_function(self, name):
        self._ensure_finalized()
        if not is_emitted(self) and _defines(self._final_module, name):
            _emit(self)
        engine = self._codegen._engine
        return engine.get_function_address(name) if engine.is_symbol_defined(name) else 0

    def serialize_using_object_code(self):
        self._ensure_finalized()
        if not is_emitted(self):   # no machine code to store: the module, for callers to link in
            return (self.name, 'bitcode', self._final_module.as_bitcode())
        return serialize(self)

    def set_env(self, env_name, env):
        if self._engine.is_symbol_defined(env_name):
            _write_environment(self, env_name, env)
        else:
            self.__dict__.setdefault('_gru4rec_pending_envs', {})[env_name] = env

    lib._optimize_final_module = _optimize_final_module
    lib._finalize_final_module = _finalize_final_module
    lib.get_pointer_to_function = get_pointer_to_function
    lib.serialize_using_object_code = serialize_using_object_code
    gen.set_env = set_env


def _defines(module, name):
    try:
        return not module.get_function(name).is_declaration
    except NameError:
        return False


def _write_environment(codegen, env_name, env):
    """What Numba's set_env does: the Environment's address into the global of that name."""
    address = codegen._engine.get_global_value_address(env_name)
    (ctypes.c_void_p * 1).from_address(address)[0] = ctypes.c_void_p(id(env))


def _write_pending_environments(codegen):
    pending = codegen.__dict__.get('_gru4rec_pending_envs', {})
    for name in [n for n in pending if codegen._engine.is_symbol_defined(n)]:
        _write_environment(codegen, name, pending.pop(name))
