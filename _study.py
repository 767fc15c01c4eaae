"""The Optuna study behind paropt: where it is stored (an SQLite file or a database URL), what defines it
(checked whenever a study is continued), and how several workers share its trial budget.

Any number of paropt workers, processes of one machine or of many, may work on one study at once:
- a worker asks the study for a trial, then counts the finished and running trials again; a trial that
  would take the study past its budget is given back unrun (state FAIL, user attribute `not_run`), so the
  budget is never overshot (see run_trials for why this is safe);
- a running trial beats a heartbeat in the storage; a trial whose worker died stops beating and is failed
  by whichever worker looks next (Optuna's fail_stale_trials), never a live trial of another worker;
- the sampler is seeded per trial with the trial's number, which the storage makes unique, so two workers
  never draw from the same random stream.
Optuna and SQLAlchemy are imported inside the functions: the command line configures numerics first.
"""
import contextlib
import hashlib
import json
import os
import random
import re
import threading
import time
import warnings

if __package__:
    from . import _outputs, cli
else:
    import _outputs, cli  # noqa: E401

InputError = cli.InputError
NOT_RUN = 'not_run'             # user attribute of a trial given back unrun (the budget was full)
DEFINITION = 'paropt_definition'  # study user attribute: what the study was made with
URL = re.compile(r'^[A-Za-z][A-Za-z0-9+.\-]*://')
SQLITE_MAGIC = b'SQLite format 3\x00'


# --- storage -----------------------------------------------------------------------------------------

def parse_storage(value):
    """(URL, SQLite file or None) for --storage: a URL as given (sqlite:///, postgresql://, mysql://, ...);
    anything else is the path of an SQLite file."""
    if not URL.match(value):
        path = os.path.abspath(value)
        return f'sqlite:///{path}', path
    if value.lower().startswith('sqlite:'):
        path = value[len('sqlite:///'):].split('?')[0] if value.lower().startswith('sqlite:///') else ''
        if not path:
            raise InputError(f'--storage {value}: an SQLite URL names a file (sqlite:///relative/path or '
                             'sqlite:////absolute/path); an in-memory study would be lost at exit')
        return f'sqlite:///{os.path.abspath(path)}', os.path.abspath(path)
    return value, None


def make_folder(path, option):
    """Make the missing folders of the output file `path` (checked by _outputs.check_output_path before any
    data were read; checked again here, as the file system may have changed since)."""
    _outputs.create_folders(_outputs.check_output_path(path, option), option)


def check_storage(value):
    """Check --storage before any data are read. Returns (URL, URL as shown: password hidden). An SQLite file
    is checked as an output path (and must be an SQLite file if it exists); a server is connected to once."""
    url, path = parse_storage(value)
    if path is not None:
        _outputs.check_output_path(path, '--storage')
        if os.path.isfile(path) and os.path.getsize(path):
            with open(path, 'rb') as f:
                if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    raise InputError(f'--storage {path} exists and is not an SQLite file')
        return url, value
    import sqlalchemy
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise InputError(f'--storage {value}: not a database URL (kind://user:password@host:port/database)') from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        timeout = {'connect_timeout': 10} if parsed.get_backend_name() in ('postgresql', 'mysql', 'mariadb') else {}
        engine = sqlalchemy.create_engine(parsed, connect_args=timeout)
    except sqlalchemy.exc.NoSuchModuleError:
        raise InputError(f'--storage {shown}: unknown database kind "{parsed.drivername}" '
                         '(use a file, sqlite:///, postgresql:// or mysql://)') from None
    except ImportError as e:
        raise InputError(f'--storage {shown}: its database driver is not installed ({e}); for PostgreSQL: '
                         'pip install "psycopg[binary]", for MySQL: pip install pymysql') from None
    try:
        with engine.connect():
            pass
    except Exception as e:
        raise InputError(f'--storage {shown}: cannot connect: {first_line(e)}') from None
    finally:
        engine.dispose()
    return url, shown


def first_line(e):
    """The driver's own message of a database error, first line (SQLAlchemy appends a background link)."""
    text = str(getattr(e, 'orig', None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def open_storage(url, shown, heartbeat):
    """The study storage with a heartbeat every `heartbeat` seconds; a running trial is stale after three
    missed beats. SQLite waits up to a minute for a lock held by another worker."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)   # paropt prints its own lines
    kwargs = {'connect_args': {'timeout': 60}} if url.startswith('sqlite') else {'pool_pre_ping': True}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():   # the heartbeat is 'experimental' in Optuna since 2.9
                warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                                                  grace_period=3 * heartbeat)
        except Exception as e:   # two workers creating the tables of a new database at once: one of them fails
            error = e
            time.sleep(0.2 + random.random())
    raise InputError(f'--storage {shown}: cannot open it as an Optuna storage: {first_line(error)}') from None


# --- what defines a study ----------------------------------------------------------------------------

def fingerprint(path):
    """Size and SHA-256 of a data file's bytes. The whole content is hashed (270 MB/s measured on a loaded
    2-core VM, reading included: faster than pandas parses it): any edit changes it, a copy on another
    machine matches it."""
    with open(path, 'rb') as f:
        digest = hashlib.file_digest(f, 'sha256').hexdigest()
    return {'bytes': os.path.getsize(path), 'sha256': digest}


def definition(fixed, space, train_path, valid_path, metric, eval_type, sample_store):
    """What makes trials of a study comparable, as JSON data. fixed: name -> canonical value, without the
    ones that equal the model's defaults (writing momentum=0.0 or leaving it out is the same study)."""
    d = {'fixed': {k: repr(v) for k, v in fixed.items()}, 'space': {e['name']: e for e in space},
         'training data': fingerprint(train_path), 'validation data': fingerprint(valid_path),
         'metric': metric, 'eval_type': eval_type, 'sample_store_size': sample_store}
    return json.loads(json.dumps(d))


OPTIONS = {'fixed': '-fp', 'space': '-opf', 'training data': 'PATH', 'validation data': 'TEST_PATH',
           'metric': '-pm/-m', 'eval_type': '-e', 'sample_store_size': '-ss'}


def differences(stored, now):
    """What differs between a study's stored definition and this command's, one phrase per difference."""
    out = []
    for key, option in OPTIONS.items():
        a, b = stored.get(key), now.get(key)
        if a == b:
            continue
        if key in ('fixed', 'space'):
            a, b = a or {}, b or {}
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    show = (lambda v: 'default' if v is None else v) if key == 'fixed' else describe
                    out.append(f'{option} {name}: {show(a.get(name))} -> {show(b.get(name))}')
        elif key.endswith('data') and a and b:
            out.append(f'{key} ({option}): other content ({a["bytes"]} -> {b["bytes"]} bytes, '
                       f'sha256 {a["sha256"][:12]} -> {b["sha256"][:12]})')
        else:
            out.append(f'{key} ({option}): {a} -> {b}')
    return out


def describe(entry):
    if entry is None:
        return 'not searched'
    extra = ''.join(f' {k}={entry[k]}' for k in ('step', 'log') if entry.get(k))
    return f'{entry["dtype"]} {entry["values"]}{extra}'


def open_study(storage, name, shown, define, pruner):
    """Create the study with its definition, or continue it if this command's definition is the stored one.
    Returns (study, True if created). A study from before definitions were stored adopts this command's,
    and the trials it left running are failed (then one process per storage was the rule)."""
    import optuna
    from optuna.trial import TrialState
    created = False
    try:
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    except KeyError:
        try:      # only one worker creates it; the others load it and wait for its definition
            study = optuna.create_study(study_name=name, storage=storage, direction='maximize', pruner=pruner)
            study.set_user_attr(DEFINITION, define)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise InputError(f'The study "{name}" in {shown} minimises its objective; paropt studies maximise '
                         'theirs. Start a new study (--study_name or another --storage).')
    stored = study.user_attrs.get(DEFINITION)
    for _ in range(100 if stored is None and not created else 0):   # its creator sets it a moment later
        time.sleep(0.1)
        stored = study.user_attrs.get(DEFINITION)
    if stored is None:
        stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        for t in stale:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        study.set_user_attr(DEFINITION, define)
        print(f'The study "{name}" had no recorded definition (made by an older paropt); this command\'s is '
              f'recorded now' + (f', and its {len(stale)} interrupted trial(s) marked failed' if stale else ''))
    elif created is False:
        diff = differences(stored, define)
        if diff:
            raise InputError(f'The study "{name}" in {shown} was made with other settings: {"; ".join(diff)}. '
                             'Rerun with its settings to continue it, or start a new study '
                             '(--study_name NAME or another --storage).')
    return study, created


# --- sharing the budget ------------------------------------------------------------------------------

def stored_trials(study, storage, states):
    """The study's trials in these states, read from the database itself: the study's own trial cache skips
    a trial stored with a lower ID after a higher one has finished (possible when PostgreSQL commits two
    workers' new trials out of order), and the budget must see every trial."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_all_trials(study_id, deepcopy=False, states=states)


def counts(study, storage):
    """(finished trials: complete or pruned, running trials) of the whole study, as stored now."""
    from optuna.trial import TrialState
    trials = stored_trials(study, storage, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def fail_stale(study):
    """Fail the running trials whose worker stopped beating (died) longer than the grace period ago."""
    import optuna
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class Heartbeat:
    """Beats for one trial in a thread, as Optuna's own optimize loop does, from the moment it is entered:
    a trial that never beat would never be recognised as stale."""

    def __init__(self, storage, study, trial):
        study_id = storage.get_study_id_from_name(study.study_name)
        self.storage, self.stop = storage, threading.Event()
        self.trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def beat(self):
        while not self.stop.wait(self.storage.get_heartbeat_interval()):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:   # a missed beat (database busy): the next one follows; the grace is 3 beats
                pass

    def __enter__(self):
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def run_trials(study, storage, objective, budget, sampler_for, after_trial, catch, poll=2.0):
    """Run trials until the study has `budget` finished (complete or pruned) trials, together with every other
    worker on it. Returns the numbers of the trials this worker finished.

    The budget counts finished and running trials. After asking for a trial (which stores it, running), the
    worker counts again and gives the trial back unrun if the count exceeds the budget. Of the trials that
    run, the one counted last saw all the others (each was stored before it was counted), so no more trials
    run than the budget leaves: the study ends with exactly `budget` finished trials. Two workers that both
    gave a trial back wait a random moment before they ask again. A worker with nothing left to ask waits
    while others run: if one of them fails, or its worker dies (heartbeat), the slot is taken again.
    Failed trials do not count; five failures in a row of this worker's trials stop it (an InputError)."""
    import optuna
    from optuna.trial import TrialState
    mine, failures, waiting = [], 0, None
    while True:
        fail_stale(study)
        done, running = counts(study, storage)
        if done >= budget:
            return mine
        if done + running >= budget:
            if waiting != (done, running):
                print(f'Waiting for {running} running trial(s) ({done} of {budget} finished; a trial of a stopped '
                      'worker is failed once its heartbeat is 3 beats late)', flush=True)
                waiting = (done, running)
            time.sleep(poll)
            continue
        waiting = None
        with warnings.catch_warnings():   # Optuna warns that its heartbeat is meant for optimize: Heartbeat beats here
            warnings.filterwarnings('ignore', 'Heartbeat of storage', UserWarning)
            trial = study.ask()
        study.sampler = sampler_for(trial.number)   # sampling happens at suggest_*, after this
        with Heartbeat(storage, study, trial):
            done, running = counts(study, storage)
            if done + running > budget:   # another worker took the last slot at the same moment
                trial.set_user_attr(NOT_RUN, True)
                study.tell(trial, state=TrialState.FAIL)
                time.sleep(random.uniform(0, poll))
                continue
            state, value = TrialState.COMPLETE, None
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except catch as e:
                print(f'TRIAL {trial.number} FAILED: {e}', flush=True)
                state = TrialState.FAIL
            except BaseException:   # Ctrl-C, or a bug: the trial is failed now, not after the grace period
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            frozen = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state,
                                skip_if_finished=True)
        if frozen.state != state:   # failed by another worker: no beat arrived for the grace period
            print(f'TRIAL {trial.number} had been marked failed by another worker (its heartbeat was late); '
                  'its result is not kept', flush=True)
            state = TrialState.FAIL
        failures = failures + 1 if state == TrialState.FAIL else 0
        if failures >= 5:
            raise InputError('The last 5 trials of this worker failed; check the fixed parameters and the space')
        if state != TrialState.FAIL:
            mine.append(trial.number)
        after_trial(study)


def last_finished(study, storage):
    """The number of the study's last finished trial (complete or pruned), or None."""
    from optuna.trial import TrialState
    numbers = [t.number for t in stored_trials(study, storage, (TrialState.COMPLETE, TrialState.PRUNED))]
    return max(numbers, default=None)


@contextlib.contextmanager
def folder_lock(path):
    """Hold an exclusive lock on the folder of `path` (workers of one machine writing the same best file take
    turns); no lock where the system has no flock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # closing releases the lock
