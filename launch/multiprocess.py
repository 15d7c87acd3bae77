#!/usr/bin/env python3
"""Runs one command as N cooperating JAX processes on this machine: multi-host on a laptop.

    python launch/multiprocess.py -n 2 --devices 4 -- \\
        gptjax train --config configs/smoke.py --workdir runs/mp

Each process gets JAX_COORDINATOR_ADDRESS=localhost:PORT, JAX_NUM_PROCESSES=N and its own
JAX_PROCESS_ID, CPU devices (`--devices` virtual ones each; collectives over gloo), and a
`[pI]` prefix on its output. This is exactly how a pod or cluster runs gptjax, with hosts
replaced by processes; `gptjax.parallel.distributed` reads these variables.

When a process fails, the others are stopped after `--grace` seconds (they would otherwise wait
in a collective until the heartbeat timeout) and the reason is printed: a process that exits
with 75 did not see all peers join within the timeout; -6 (SIGABRT) is JAX's coordination
service aborting because a peer died or stopped answering.
`--skip I` does not start process I, to watch the others fail fast (used by the tests).
Exit status: 0 if every process succeeded, else the first failing process's status (signals as
128 + number).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

# gptjax.parallel.distributed.EXIT_PEER_TIMEOUT (this script stays importable without jax)
EXIT_PEER_TIMEOUT = 75


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def child_env(base: dict, rank: int, n: int, port: int, devices: int, platform: str) -> dict:
    """The environment of process `rank`: coordinator, process id, CPU device count."""
    env = dict(base)
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(n),
               JAX_PROCESS_ID=str(rank), PYTHONUNBUFFERED="1")
    if platform:
        env["JAX_PLATFORMS"] = platform
    if devices > 0:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    return env


def explain(rank: int, code: int, timeout: str) -> str:
    if code == EXIT_PEER_TIMEOUT:
        return (f"process {rank}: peers did not join within the initialization timeout "
                f"({timeout}); was every process started?")
    if code == -signal.SIGABRT:
        return (f"process {rank}: aborted by JAX's coordination service (SIGABRT): a peer died, "
                f"never joined, or stopped sending heartbeats; see the first failing process")
    if code < 0:
        return f"process {rank}: killed by signal {signal.Signals(-code).name}"
    return f"process {rank}: exited with status {code}"


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, b""):
        out.write(prefix + line.decode(errors="replace"))
        out.flush()


def launch(command: list[str], n: int, devices: int = 0, platform: str = "cpu",
           skip: tuple[int, ...] = (), timeout: int | None = None, grace: float = 10.0,
           port: int | None = None, out=None) -> int:
    out = out or sys.stdout
    port = port or free_port()
    if timeout is not None:  # gptjax commands (those given a --config) read it from there
        if not any(a == "--config" or a.startswith("--config=") for a in command):
            raise SystemExit("--timeout needs a gptjax command with --config FILE")
        command = command + [f"--config.distributed.initialization_timeout={timeout}"]
    procs, pumps = {}, []
    for rank in range(n):
        if rank in skip:
            out.write(f"[launcher] not starting process {rank} (--skip)\n")
            continue
        p = subprocess.Popen(command, env=child_env(os.environ, rank, n, port, devices, platform),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        t = threading.Thread(target=_pump, args=(p.stdout, f"[p{rank}] ", out), daemon=True)
        t.start()
        procs[rank], pumps = p, pumps + [t]
    codes: dict[int, int] = {}
    failed_at = None
    while len(codes) < len(procs):
        for rank, p in procs.items():
            if rank not in codes and p.poll() is not None:
                codes[rank] = p.returncode
                if p.returncode != 0 and failed_at is None:
                    failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace:
            for rank, p in procs.items():
                if rank not in codes:
                    out.write(f"[launcher] stopping process {rank}: another process failed\n")
                    p.kill()
                    codes[rank] = p.wait()
        time.sleep(0.05)
    for t in pumps:
        t.join(timeout=5)
    bad = [(r, c) for r, c in sorted(codes.items()) if c != 0]
    if skip and not bad:
        out.write("[launcher] error: processes finished although some were skipped\n")
        return 1
    for rank, code in bad:
        out.write(f"[launcher] {explain(rank, code, f'{timeout}s' if timeout else 'config')}\n")
    if not bad:
        return 0
    code = bad[0][1]
    return code if code > 0 else 128 - code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        usage="%(prog)s [-n N] [--devices D] [options] -- COMMAND ...")
    parser.add_argument("-n", "--num-processes", type=int, default=2)
    parser.add_argument("--devices", type=int, default=4,
                        help="virtual CPU devices per process (0: leave XLA_FLAGS alone)")
    parser.add_argument("--platform", default="cpu",
                        help="JAX_PLATFORMS for the processes ('' = leave as is)")
    parser.add_argument("--timeout", type=int, default=None,
                        help="seconds to wait for all processes to join; appended to a gptjax "
                             "command as --config.distributed.initialization_timeout")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds the others may run on after one process fails")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0 = a free one)")
    parser.add_argument("--skip", type=int, action="append", default=[],
                        help="do not start this process id (to test fail-fast)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("missing COMMAND after --")
    if args.num_processes < 1 or any(not 0 <= s < args.num_processes for s in args.skip):
        parser.error("need -n >= 1 and every --skip in 0..n-1")
    if command[0] == "gptjax":  # the same interpreter as the launcher, installed or not
        command = [sys.executable, "-m", "gptjax"] + command[1:]
    return launch(command, args.num_processes, args.devices, args.platform, tuple(args.skip),
                  args.timeout, args.grace, args.port or None)


if __name__ == "__main__":
    sys.exit(main())
