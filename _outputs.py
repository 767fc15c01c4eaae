"""Output paths of the command lines: checked before any work starts, their missing folders created once the
other checks passed (and removed again if the run then stops on bad input), and a fallback file in the
system temp folder when a write still fails at the end, so that nothing trained is thrown away.

Imports no numerics: the command lines (run.py; paropt.py for -o and an SQLite --storage, through _study;
gru4rec recommend for -o) check their paths before the configuration is applied.
"""
import errno
import os
import tempfile

if __package__:
    from . import cli
else:
    import cli


def check_output_path(path, flag, folder=False):
    """cli.InputError (naming `flag`) unless `path` can be written: a file, or with folder=True a folder.
    Creates nothing (a probe file in an existing folder is removed at once). Returns the folders that are
    missing, outermost first, for create_folders."""
    path = os.fspath(path)
    if not path or (not folder and path.endswith((os.sep, '/'))):
        raise cli.InputError(f'{flag} "{path}": expected a file name')
    full = os.path.abspath(path)
    if folder:
        if os.path.exists(full) and not os.path.isdir(full):
            raise cli.InputError(f'{flag} {path}: this is a file, not a folder')
        nearest = full
    else:
        if os.path.isdir(full):
            raise cli.InputError(f'{flag} {path}: this is a folder; give a file name')
        nearest = os.path.dirname(full)
    missing = []
    while not os.path.exists(nearest):   # walk up to the nearest existing ancestor
        missing.insert(0, nearest)
        nearest = os.path.dirname(nearest)
    if not os.path.isdir(nearest):
        raise cli.InputError(f'{flag} {path}: {nearest} is a file, not a folder')
    if missing:   # cannot be probed without creating it; creating it is create_folders' job
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise cli.InputError(f'{flag} {path}: cannot create the folder {missing[0]} (no permission in {nearest})')
        return missing
    try:   # the real test (os.access says yes to root on a read-only or virtual file system)
        fd, probe = tempfile.mkstemp(prefix='.probe-', dir=nearest)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:   # (a virtual file system such as /proc answers "no such file" for a new file)
        reason = 'files cannot be created there' if e.errno == errno.ENOENT else (e.strerror or e)
        raise cli.InputError(f'{flag} {path}: cannot write in the folder {nearest} ({reason})') from None
    return missing


def create_folders(folders, flag):
    """Create `folders` (check_output_path's list, outermost first). Returns those created, to undo with
    remove_folders; cli.InputError naming `flag` if one cannot be created (those made here are removed)."""
    created = []
    for folder in folders:
        if os.path.isdir(folder):
            continue
        try:
            os.mkdir(folder)
        except OSError as e:
            remove_folders(created)
            raise cli.InputError(f'{flag}: cannot create the folder {folder} ({e.strerror or e})') from None
        created.append(folder)
    return created


def remove_folders(created):
    """Remove the folders create_folders made, innermost first, where they are still empty: a run stopped by
    bad input leaves nothing behind."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)
        except OSError:
            pass   # something was written there, or it is gone already: keep what is there


def write_or_fallback(path, what, write):
    """write(path); if that fails with an OSError (or an error caused by one: the folder removed meanwhile, a
    full disk, no permission), write_fallback instead. Returns None on success, else the text of the ERROR
    line, which names the fallback file (or says that it could not be written either)."""
    try:
        write(path)
        return None
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
    fallback, failure = write_fallback(path, write)
    return f'Cannot write {what} to {path} ({reason}); ' + (failure or f'it was saved to {fallback} instead')


def write_failure(error):
    """The reason of a failed write if `error` is an OSError or was raised from one (as savemodel's
    GRU4RecError), else None."""
    cause = error if isinstance(error, OSError) else error.__cause__
    return (cause.strerror or str(cause)) if isinstance(cause, OSError) else None


def write_fallback(name, write):
    """write(fallback), a new file in the system temp folder (tempfile.gettempdir()) named after `name`, with
    its extension. Returns (fallback, None), or (None, what failed) if that cannot be written either."""
    stem, ext = os.path.splitext(os.path.basename(os.fspath(name)))
    try:
        fd, fallback = tempfile.mkstemp(prefix=f'gru4rec-{stem}-', suffix=ext)   # a unique name, replaced by write
        os.close(fd)
    except OSError as e:
        return None, f'the temp folder {tempfile.gettempdir()} cannot be written either ({e.strerror or e})'
    try:
        write(fallback)
    except Exception as e:
        if os.path.exists(fallback):
            os.unlink(fallback)
        return None, f'{fallback} cannot be written either ({e})'
    return fallback, None
