"""Backend configuration: which PyTensor compilation mode runs a GRU4Rec graph.

The model code in gru4rec.py builds plain PyTensor graphs; this module decides how they are
compiled. Backends:

* ``numba``  -- PyTensor's Numba backend (the CPU default; cold compile ~30 s, then cached on disk).
* ``jax``    -- PyTensor's JAX backend (the GPU path; also runs on the CPU when JAX is installed).
* ``python`` -- PyTensor's FAST_COMPILE mode (numpy ``perform`` implementations, sub-second compile).
               Slow to run; used by the test-suite to check numerics of many graph variants.
"""

BACKENDS = ('numba', 'jax', 'python')
DEFAULT_BACKEND = 'numba'


def check_backend(backend):
    """Return the canonical backend name or raise ValueError with the accepted names."""
    name = DEFAULT_BACKEND if backend is None else str(backend).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f'unknown backend "{backend}"; use one of: {", ".join(BACKENDS)}')
    if name == 'jax':
        try:
            import jax  # noqa: F401
        except ImportError:
            raise ValueError('backend "jax" needs JAX: pip install "jax[cuda12]" (GPU) or pip install jax (CPU)') from None
    return name


def compile_mode(backend):
    """The PyTensor Mode for a backend name (see check_backend)."""
    from pytensor.compile.mode import get_mode
    return get_mode({'numba': 'NUMBA', 'jax': 'JAX', 'python': 'FAST_COMPILE'}[check_backend(backend)])
