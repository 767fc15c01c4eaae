"""Devices and backends: device names, which backend a device runs on, the memory free for training, and the
number of BLAS/Numba threads.

The model and the command line share this one policy. The command line applies it before numpy, PyTensor or
JAX are imported (they read their thread counts and flags then), so this module imports none of them at
module level; JAX is asked only inside the functions that need a device.
"""
import os
import re

BACKENDS = ('numba', 'jax', 'python')
DEFAULT_BACKEND = 'numba'
THREAD_VARIABLES = ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMBA_NUM_THREADS')


def parse_device(device):
    """(kind, index) of a device name: None or 'cpu[:N]' -> ('cpu', N or None); 'cuda[:N]', 'cudaN', 'gpu[:N]'
    (Theano's spelling) -> ('cuda', N or None). ValueError for anything else."""
    if device is None:
        return 'cpu', None
    m = re.fullmatch(r'(cpu|cuda|gpu):?(\d*)', str(device).strip().lower())
    if not m:
        raise ValueError(f'unknown device "{device}"; use cpu or cuda[:N]')
    return ('cpu' if m[1] == 'cpu' else 'cuda'), (int(m[2]) if m[2] else None)


def default_backend(device):
    """The backend of a device when none is chosen: JAX for a GPU (the only backend that runs there), else
    DEFAULT_BACKEND."""
    return 'jax' if parse_device(device)[0] != 'cpu' else DEFAULT_BACKEND


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


def backend_in_use(backend, device):
    """The backend that a model with these backend and device parameters runs on (checked by check_backend)."""
    return check_backend(backend or default_backend(device))


def jax_device(device):
    """The JAX device object of a device name (see parse_device); ValueError with what to do if JAX does not
    see it (e.g. a CPU-only JAX install)."""
    import jax
    kind, index = parse_device(device)
    try:
        found = jax.devices('cpu' if kind == 'cpu' else 'gpu')
    except RuntimeError:   # JAX knows no such platform: a CPU-only install
        found = []
    if not found:
        raise ValueError(f'device "{device}": JAX sees no GPU (its devices: {", ".join(str(d) for d in jax.devices())}); '
                         f'for NVIDIA GPUs install the GPU extra: pip install ".[gpu]" in the checkout (= pip install "jax[cuda12]")')
    if (index or 0) >= len(found):
        raise ValueError(f'device "{device}": JAX sees {len(found)} {kind} device(s) (0..{len(found) - 1})')
    return found[index or 0]


def available_memory(accelerator=False, device=None):
    """Bytes available to a new allocation: free memory of the JAX GPU that the JAX backend will use (device
    as in parse_device; None = JAX's default device) if accelerator is set and that is a GPU, else this
    machine's available RAM (Linux MemAvailable); None if unknown. A device that fails (ValueError from
    jax_device: JAX does not see it; JAX's RuntimeError) is raised, not hidden behind the host's memory."""
    if accelerator:
        try:
            import jax
        except ImportError:   # no JAX: nothing runs on a GPU
            jax = None
        dev = None if jax is None else jax.devices()[0] if device is None else jax_device(device)
        if dev is not None and dev.platform == 'gpu':
            try:
                stats = dev.memory_stats()
                return int(stats['bytes_limit'] - stats['bytes_in_use'])
            except (TypeError, KeyError, NotImplementedError):   # no statistics: fall back to the host memory
                pass
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


def pin_threads(threads, environ=os.environ):
    """Ask BLAS, OpenMP and Numba for `threads` threads, unless the environment already says how many. Takes
    effect only for libraries imported afterwards: call it before numpy is imported."""
    for var in THREAD_VARIABLES:
        environ.setdefault(var, str(threads))
