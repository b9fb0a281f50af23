"""Runs a command as N JAX processes on this machine (CPU collectives over loopback).

    python launch/local_multiprocess.py --num_processes=2 -- \
        python -m pmjax.train --config=configs/mnist.py:smoke --workdir=/tmp/mp

Each process gets PMJAX_COORDINATOR=127.0.0.1:PORT, PMJAX_NUM_PROCESSES and
PMJAX_PROCESS_ID, which `pmjax.train` passes to `jax.distributed.initialize`
(gloo collectives), so one global ('data',) mesh spans all processes. This
exercises the multi-host code path on one machine; on a cluster use
launch/slurm_multinode.sbatch or launch/tpu_vm.sh instead.
"""

import argparse
import os
import socket
import subprocess
import sys


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--num_processes', type=int, default=2)
  p.add_argument('--port', type=int, default=0, help='coordinator port (0 = a free one)')
  p.add_argument('--timeout_s', type=float, default=600)
  p.add_argument('command', nargs=argparse.REMAINDER)
  a = p.parse_args()
  cmd = a.command[1:] if a.command[:1] == ['--'] else a.command
  if not cmd:
    p.error('give the command to run after --')
  coordinator = f'127.0.0.1:{a.port or free_port()}'
  procs = []
  for i in range(a.num_processes):
    env = dict(os.environ, PMJAX_COORDINATOR=coordinator,
               PMJAX_NUM_PROCESSES=str(a.num_processes), PMJAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(cmd, env=env))
  codes = []
  for proc in procs:
    try:
      codes.append(proc.wait(timeout=a.timeout_s))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      print(f'timed out after {a.timeout_s} s; killed every process', file=sys.stderr)
      sys.exit(124)
  if any(codes):
    print(f'process exit codes: {codes}', file=sys.stderr)
  sys.exit(max(codes))


if __name__ == '__main__':
  main()
