"""The stack's PostgreSQL: the Debian server binaries, one cluster per stack, one database each for
Prefect and MLflow, on 127.0.0.1 only (no Unix socket), password authentication.

PostgreSQL refuses to run as root; run as root, the stack runs it as the unprivileged ``postgres``
user, which must own the data folder and be able to reach it. A stack folder under a private home
(``/root`` is 0700) is out of its reach, so the data then lives under ``/var/lib/steermoe/postgres/``
with a ``postgres`` link in the stack folder pointing there.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path

from steermoe.errors import StackError
from steermoe.stack.layout import StackLayout

__all__ = ["USER", "DATABASES", "find_binaries", "server_user", "data_dir", "ensure_cluster", "command", "is_ready", "ensure_databases", "remove_stale_lock"]

USER = "steermoe"  # the cluster's superuser (a database role, not a system account)
DATABASES = ("prefect", "mlflow")
SYSTEM_DATA_ROOT = Path("/var/lib/steermoe/postgres")
_BINARIES = ("initdb", "postgres")
_INSTALL = "install them (Debian/Ubuntu: apt-get install postgresql) or point STEERMOE_PG_BIN at the folder holding initdb and postgres"


def find_binaries() -> Path:
    """The folder holding ``initdb`` and ``postgres``: ``$STEERMOE_PG_BIN``, else ``PATH``, else the
    newest ``/usr/lib/postgresql/<version>/bin`` (where Debian puts them, off ``PATH``)."""
    explicit = os.environ.get("STEERMOE_PG_BIN")
    if explicit:
        folder = Path(explicit)
        if all((folder / b).is_file() for b in _BINARIES):
            return folder
        raise StackError(f"PostgreSQL server binaries (initdb, postgres) not found in STEERMOE_PG_BIN={explicit}; {_INSTALL}")
    found = [shutil.which(b) for b in _BINARIES]
    if all(found):
        return Path(os.path.realpath(found[0])).parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name), reverse=True)
    for folder in debian:
        if all((folder / b).is_file() for b in _BINARIES):
            return folder
    raise StackError(f"PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql; {_INSTALL}")


def _version(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in name.split("."))


def server_user() -> str | None:
    """The system user Postgres runs as: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StackError("running as root, PostgreSQL needs the unprivileged 'postgres' user, which does not exist; create it (useradd --system postgres) or run the stack as a normal user") from None
    return "postgres"


def _reachable_by(user: str, folder: Path) -> bool:
    # Search permission on the folder and every folder above it is what the server needs to reach its data.
    return subprocess.run(["test", "-x", str(folder)], user=user, check=False).returncode == 0


def data_dir(layout: StackLayout) -> Path:
    """The cluster's data folder (created empty if missing), owned by the user Postgres runs as."""
    user = server_user()
    if layout.postgres_link.is_symlink() or (layout.postgres_link / "data").exists():
        home = layout.postgres_link.resolve()
    elif user is None or _reachable_by(user, layout.root):
        home = layout.postgres_link
    else:
        home = SYSTEM_DATA_ROOT / hashlib.sha256(str(layout.root).encode()).hexdigest()[:16]
        layout.postgres_link.symlink_to(home, target_is_directory=True)
    home.mkdir(parents=True, exist_ok=True)
    data = home / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (home, data):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return data


def _password(layout: StackLayout) -> str:
    """The generated superuser password (0600 file, created once, never printed)."""
    if layout.password_file.exists():
        return layout.password_file.read_text(encoding="utf-8").strip()
    password = secrets.token_urlsafe(24)
    fd = os.open(layout.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def write_pgpass(layout: StackLayout, port: int) -> None:
    """The libpq password file the clients (Prefect's asyncpg, MLflow's psycopg) read via $PGPASSFILE."""
    password = _password(layout)
    tmp = layout.pgpass_file.with_name(".pgpass.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"127.0.0.1:{port}:*:{USER}:{password}\n")
    os.replace(tmp, layout.pgpass_file)


def ensure_cluster(layout: StackLayout, bin_dir: Path) -> Path:
    """``initdb`` on first start (superuser ``steermoe``, scram-sha-256); returns the data folder."""
    data = data_dir(layout)
    if (data / "PG_VERSION").exists():
        return data
    user = server_user()
    # initdb reads the password from a file; give it a copy only the server user can read, then remove it.
    pwfile = data.parent / ".initdb-password"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_password(layout) + "\n")
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    try:
        with open(layout.log_file("postgres"), "ab") as log:
            done = subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
                user=user, cwd=data.parent, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False,
            )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise StackError(f"postgres: initdb failed (exit {done.returncode}); see {layout.log_file('postgres')}")
    return data


def command(bin_dir: Path, data: Path, port: int) -> list[str]:
    """The server in the foreground: TCP on loopback only, no Unix socket, small enough for a laptop."""
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": "",
        "max_connections": "100",
        "shared_buffers": "64MB",
        "logging_collector": "off",
    }
    return [str(bin_dir / "postgres"), "-D", str(data), *(arg for k, v in settings.items() for arg in ("-c", f"{k}={v}"))]


def remove_stale_lock(data: Path) -> bool:
    """Remove ``postmaster.pid`` left by a server that is gone (Postgres refuses to start over it when
    its pid has been reused). Only call this when the stack knows its server is not running."""
    lock = data / "postmaster.pid"
    if not lock.exists():
        return False
    lock.unlink()
    return True


def _connect(port: int, pgpass: Path, dbname: str = "postgres"):
    import psycopg

    return psycopg.connect(host="127.0.0.1", port=port, user=USER, dbname=dbname, passfile=str(pgpass), connect_timeout=3, autocommit=True)


def is_ready(port: int, pgpass: Path) -> bool:
    """The server accepts our password and answers a query."""
    import psycopg

    try:
        with _connect(port, pgpass) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def ensure_databases(port: int, pgpass: Path) -> None:
    with _connect(port, pgpass) as conn:
        have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in have:
                conn.execute(f'CREATE DATABASE "{name}"')
