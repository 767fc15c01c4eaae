"""Ctrl-C (SIGINT) and SIGTERM in the command lines: the run ends with one line saying what was kept and exit
code 128 + the signal (130, 143), never with a traceback, and the signal is never lost.

While handled() is active, a signal raises Interrupted wherever the main thread is, as Ctrl-C does by
default. That can be inside C code that calls back into Python, and there the exception does not arrive as
raised: a Numba-compiled step returns it wrapped ("SystemError: CPUDispatcher(...) returned a result with an
exception set"), a ctypes callback of LLVM during compilation swallows it ("Exception ignored on calling
ctypes callback function") and the run goes on. So the signal is also recorded, and
- the hook of unraisable exceptions stays quiet about a swallowed Interrupted and delivers the signal to the
  main thread again 50 ms later, until it lands in Python code that lets it through (usually the compiler's
  own, right after the callback);
- check(), called at safe points (every minibatch of training and evaluation, every trial of paropt), raises
  a recorded signal again;
- reason() finds the interruption behind whatever exception ended a run after a signal (a wrapper, or an
  error that a library made of it).
Inside deferred() (writing a checkpoint or a model) the first signal is only recorded and raised when the
write is done; a second one raises at once (the writes are atomic: the old file stays). Once a command line
reports the interruption (exiting()), another signal is ignored until its line is printed, then ends the
process at once.

Standard library only: the command lines use it before numpy or PyTensor are imported.
"""
import _thread
import contextlib
import gc
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal asked the run to stop. A BaseException like KeyboardInterrupt, so that no `except Exception`
    takes it for an error; not a KeyboardInterrupt, so that Optuna does not store and log it as a failed
    trial."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


class State:
    """The signal recorded in this process (the first one), and how the handler treats the next one."""

    def __init__(self):
        self.signum, self.deferring, self.exiting, self.resending, self.recording = None, 0, False, False, False


state = State()


def handle(signum, frame):
    """The signal handler: record the signal and raise Interrupted (see the module's docstring)."""
    resent, state.resending = state.resending, False
    if state.exiting:   # until the line is printed, nothing; then a second Ctrl-C ends the clean-up at once
        if resent or state.exiting == 'reporting':
            return
        os._exit(128 + signum)
    first = state.signum is None
    if first:
        state.signum = signum
    if state.recording or (state.deferring and first):
        return
    raise Interrupted(state.signum)


@contextlib.contextmanager
def handled():
    """Install handle() for SIGINT and SIGTERM, and the quiet hook of unraisable exceptions (after a signal
    none is printed; one that carries the interruption delivers it again to the main thread); restore both
    afterwards (a command line's main() may run inside another program). A signal the process was started
    to ignore (SIG_IGN, e.g. SIGINT for a background job of a script) stays ignored. Outside the main thread,
    where Python cannot set handlers, the default Ctrl-C behaviour stays (reason() takes KeyboardInterrupt).
    """
    global state
    outer = state
    state = State()
    previous_hook = sys.unraisablehook

    def hook(unraisable):
        if state.signum is None:
            previous_hook(unraisable)
        elif wraps_interrupt(unraisable.exc_value):
            if not state.resending:
                resend_later(state)
        # else dropped: after a signal, an object whose construction it cut short (e.g. a zipfile.ZipFile
        # interrupted in its __init__ while a model loads) can fail in its finaliser; the run ends with one line

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, handle) for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
        sys.unraisablehook = hook
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if previous:
            sys.unraisablehook = previous_hook
        state = outer


def resend_later(st, delay=0.05):
    """Deliver st's signal to the main thread again after `delay` seconds (from another thread), unless the
    run is already reporting it or handled() has ended."""
    def resend():
        if st is state and not st.exiting:
            _thread.interrupt_main(st.signum)
        else:
            st.resending = False

    st.resending = True
    timer = threading.Timer(delay, resend)
    timer.daemon = True
    timer.start()


def check():
    """Raise Interrupted if a signal arrived: its exception may have been swallowed on the way (by a ctypes
    callback, or by code that turned it into another error and went on). A no-op without handled(), and
    inside deferred() and recorded()."""
    if state.signum is not None and not state.deferring and not state.recording:
        raise Interrupted(state.signum)


@contextlib.contextmanager
def deferred():
    """Finish what the block does (a file write) before the first signal takes effect; a second one raises
    at once."""
    state.deferring += 1
    try:
        yield
    finally:
        state.deferring -= 1
    check()


@contextlib.contextmanager
def recorded():
    """Only record signals in the block (for a server that handles them itself and passes them on once it
    has stopped). Yields a list that then holds the signal, if one came; it is taken off the state."""
    got = []
    state.recording = True
    try:
        yield got
    finally:
        state.recording = False
        if state.signum is not None:
            got.append(state.signum)
            state.signum = None


def wraps_interrupt(exc):
    """True if exc is, or was caused by, an Interrupted or KeyboardInterrupt (the chain of __cause__ and
    __context__: C code such as Numba's dispatcher re-raises it as a SystemError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (Interrupted, KeyboardInterrupt)):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def reason(exc):
    """The Interrupted that ended a run with exception exc, or None if exc is an error of its own: any
    exception after a signal counts as the interruption, since the signal's exception may have been turned
    into another one on the way. A KeyboardInterrupt (no handled() here) counts as SIGINT."""
    if isinstance(exc, Interrupted):
        return exc
    if state.signum is not None:
        return Interrupted(state.signum)
    if wraps_interrupt(exc):
        return Interrupted(signal.SIGINT)
    return None


def exiting(reported=False):
    """The run is reporting its interruption: another signal is ignored until its line is printed
    (reported=True), then ends the process at once."""
    state.exiting = 'done' if reported else 'reporting'


@contextlib.contextmanager
def translated():
    """Let any exception that a signal caused leave the block as a plain Interrupted (e.g. around a paropt
    objective: Optuna would store and log a wrapper as a failed trial, with its traceback)."""
    try:
        yield
    except BaseException as e:
        stop = reason(e)
        if stop is None or stop is e:
            raise
        raise stop from None


def run_main(body, errors, report_error, interrupted_line, cleanup=None):
    """The frame of a command line's main(): body() under handled(); returns its exit code. An exception of
    the classes `errors` is reported by report_error(e), which returns the code; an interruption prints the
    one line interrupted_line(stop) on stderr, then runs cleanup() (a second signal ends it at once) and
    returns 130 or 143; anything else propagates."""
    with handled():
        try:
            code = body()
            check()   # a signal that C code swallowed on the way still counts
            return code
        except BaseException as e:
            stop = reason(e)
            if stop is None:
                if isinstance(e, errors):
                    return report_error(e)
                raise
            exiting()
            sys.stdout.flush()
            print(interrupted_line(stop), file=sys.stderr, flush=True)
            exiting(reported=True)
            if cleanup is not None:
                cleanup()
            # objects the signal cut short live in the traceback's frames (often in a cycle): collect them now,
            # while handled()'s hook keeps their failing finalisers quiet, not at exit
            seen = set()
            while e is not None and id(e) not in seen:   # the whole chain (stop may be e itself)
                seen.add(id(e))
                e.__traceback__, e = None, e.__cause__ or e.__context__
            gc.collect()
            return stop.exit_code
