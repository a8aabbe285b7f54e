"""Stack processes: a pid names a member only if it carries the stack's marker; stop reaches the whole group."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from steermoe.stack.processes import MARKER, is_member, members, port_in_use, read_pid, spawn, stop, tail


def test_a_spawned_process_and_its_children_are_members_and_stop_ends_them_all(tmp_path):
    marker = str(tmp_path)
    # A parent that starts a child in a session of its own (as the worker does for flow runs).
    script = "import subprocess, time; subprocess.Popen(['sleep', '60'], start_new_session=True); time.sleep(60)"
    proc = spawn([sys.executable, "-c", script], env=dict(os.environ), log=tmp_path / "x.log", marker=marker)
    try:
        for _ in range(100):
            if len(members(marker)) == 2:
                break
            subprocess.run(["sleep", "0.1"])
        assert proc.pid in members(marker) and len(members(marker)) == 2
        assert not is_member(os.getpid(), marker)  # a live process without the marker (a reused pid) is not ours
        assert not is_member(proc.pid, marker + "-other")
        stop(proc.pid, marker, grace=5)
        proc.wait(timeout=5)
        for pid in members(marker):  # the child left the group: down finds it by its marker
            stop(pid, marker, grace=5)
        assert members(marker) == []
    finally:
        proc.kill()


def test_pid_files_ports_and_log_tails(tmp_path):
    assert read_pid(tmp_path / "none.pid") is None
    (tmp_path / "bad.pid").write_text("not a pid")
    assert read_pid(tmp_path / "bad.pid") is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert port_in_use(s.getsockname()[1])
    log = tmp_path / "service.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, 3) == ["line 97", "line 98", "line 99"] and tail(tmp_path / "missing.log") == []
    assert MARKER == "STEERMOE_STACK_MEMBER"
