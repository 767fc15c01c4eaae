"""paropt --n_workers K: K worker processes on one machine, each on its share of the cores, sharing one study.

The parent starts the workers (the same command line plus --worker I), copies their output with a [wI]
prefix, forwards Ctrl-C and SIGTERM to them as Ctrl-C (each fails its running trial and stops), and waits.
Each worker pins itself (pin), before numerics are imported: its threads then stay on its cores.
Imports no numerics.
"""
import os
import signal
import subprocess
import sys
import threading

if __package__:
    from . import _devices
else:
    import _devices


def share(index, n_workers, cpus):
    """Worker `index`'s cores out of `cpus`: contiguous blocks of (nearly) equal size; with more workers than
    cores, workers share cores round-robin."""
    if n_workers >= len(cpus):
        return [cpus[index % len(cpus)]]
    return cpus[index * len(cpus) // n_workers:(index + 1) * len(cpus) // n_workers]


def pin(index, n_workers, environ=os.environ):
    """In worker `index`: run on its share of the cores this process may use, and ask BLAS, OpenMP and Numba
    for as many threads. Call it before numpy is imported. Returns the cores (None where the system cannot pin)."""
    if not hasattr(os, 'sched_setaffinity'):
        return None
    cores = share(index, n_workers, sorted(os.sched_getaffinity(0)))
    os.sched_setaffinity(0, cores)
    for var in _devices.THREAD_VARIABLES:
        environ[var] = str(len(cores))
    return cores


def run_workers(command, n_workers):
    """Run `command + ['--worker', I]` for I < n_workers and wait for all. Returns (exit codes, the signal that
    stopped them or None, the first 'ERROR.' line of each worker or None). ERROR lines are not copied: the
    caller reports them once."""
    procs, threads, errors, received = [], [], [None] * n_workers, []
    lock = threading.Lock()
    env = dict(os.environ, PYTHONUNBUFFERED='1')

    def copy(i, stream, out):
        for line in stream:
            if out is sys.stderr and line.startswith('ERROR. '):
                errors[i] = errors[i] or line.rstrip('\n')
                continue
            with lock:
                out.write(f'[w{i}] {line}')
                out.flush()

    def forward(sig, frame):
        received.append(sig)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(n_workers):
            # a process group of its own: a Ctrl-C in the terminal reaches the parent only, which forwards it once
            p = subprocess.Popen(command + ['--worker', str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env, process_group=0)
            procs.append(p)
            for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
                threads.append(threading.Thread(target=copy, args=(i, stream, out), daemon=True))
                threads[-1].start()
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    for t in threads:
        t.join()
    return codes, (received[0] if received else None), errors
