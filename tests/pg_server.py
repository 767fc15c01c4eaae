"""A throwaway PostgreSQL server for the paropt tests: a new cluster in a folder, on a free loopback port (its
database 'postgres'). As root it runs as the 'postgres' user (initdb refuses root). Used by the tests' fixture and by
.ci/run:

    python tests/pg_server.py start DIR    # prints the database URL
    python tests/pg_server.py stop DIR
"""
import glob
import os
import shutil
import socket
import subprocess
import sys

def bindir():
    """The folder of initdb and pg_ctl: on the PATH, or Debian's /usr/lib/postgresql/N/bin; None if missing."""
    for folder in [None] + sorted(glob.glob('/usr/lib/postgresql/*/bin'), reverse=True):
        initdb, pg_ctl = shutil.which('initdb', path=folder), shutil.which('pg_ctl', path=folder)
        if initdb and pg_ctl and os.path.dirname(initdb) == os.path.dirname(pg_ctl):
            return os.path.dirname(initdb)
    return None


def as_owner(folder):
    """The command prefix that runs a program as the cluster's owner (the folder's owner when we are root)."""
    if os.geteuid() != 0:
        return []
    import pwd
    return ['runuser', '-u', pwd.getpwuid(os.stat(folder).st_uid).pw_name, '--']


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start(folder, user='postgres'):
    """Create and start a cluster in `folder` (made if missing; as root it is given to `user`). Returns the URL."""
    tools = bindir()
    if tools is None:
        raise RuntimeError('PostgreSQL is not installed (no initdb and pg_ctl on the PATH or in /usr/lib/postgresql)')
    os.makedirs(folder, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, user)
    prefix, port, data = as_owner(folder), free_port(), os.path.join(folder, 'data')
    def call(*cmd):
        subprocess.run(prefix + list(cmd), check=True, capture_output=True, text=True, cwd=folder)
    call(os.path.join(tools, 'initdb'), '-D', data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-sync')
    call(os.path.join(tools, 'pg_ctl'), '-D', data, '-l', os.path.join(folder, 'server.log'), '-w', '-o',
         f'-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off', 'start')
    return f'postgresql://postgres@127.0.0.1:{port}/postgres'


def stop(folder):
    tools = bindir()
    data = os.path.join(folder, 'data')
    if tools and os.path.isdir(data):
        subprocess.run(as_owner(folder) + [os.path.join(tools, 'pg_ctl'), '-D', data, '-m', 'fast', '-w', 'stop'],
                       capture_output=True, cwd=folder)


if __name__ == '__main__':
    if len(sys.argv) != 3 or sys.argv[1] not in ('start', 'stop'):
        sys.exit(__doc__)
    if sys.argv[1] == 'start':
        try:
            print(start(sys.argv[2]))
        except (RuntimeError, subprocess.CalledProcessError) as e:
            sys.exit(f'ERROR. Cannot start PostgreSQL: {e} {getattr(e, "stderr", "") or ""}'.strip())
    else:
        stop(sys.argv[2])
