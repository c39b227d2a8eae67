"""The lease: one writer per job dir or output prefix, locally and on gs://."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests import helpers
from trainer import lease as lease_lib
from trainer import storage

_HOLD = """
import sys, time
from trainer import lease
held = lease.Lease(sys.argv[1], 'training').acquire()
print('held', flush=True)
time.sleep(600)
"""


def test_a_second_local_holder_is_refused_with_the_holders_name(tmp_path):
  path = str(tmp_path / 'job' / '_LEASE')
  first = lease_lib.Lease(path, 'training').acquire()
  with pytest.raises(lease_lib.LeaseError,
                     match=rf'pid {os.getpid()} on host .*training'):
    lease_lib.Lease(path, 'training').acquire()
  first.release()
  assert not os.path.exists(path)
  with lease_lib.Lease(path, 'training') as second:
    assert second.held
  first.release()  # Twice is fine.


def test_a_local_lease_dies_with_its_process(tmp_path):
  path = str(tmp_path / '_LEASE')
  holder = subprocess.Popen(
      [sys.executable, '-c', _HOLD, path], cwd=helpers.REPO,
      env=dict(os.environ, PYTHONPATH=helpers.REPO), stdout=subprocess.PIPE,
      text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(lease_lib.LeaseError, match=f'pid {holder.pid}'):
      lease_lib.Lease(path, 'training').acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  finally:
    holder.kill()
  # The kernel dropped the lock: no stale lease to break by hand.
  lease_lib.Lease(path, 'training').acquire().release()


def test_gcs_lease_is_exclusive_and_released(gcs_server):
  path = 'gs://test-bucket/job/_LEASE'
  first = lease_lib.Lease(path, 'scoring').acquire()
  record = json.loads(storage.read_text(path))
  assert record['pid'] == os.getpid() and record['purpose'] == 'scoring'
  with pytest.raises(lease_lib.LeaseError, match='--break_lease'):
    lease_lib.Lease(path, 'scoring').acquire()
  first.renew()  # A heartbeat keeps it ours.
  first.check()
  first.release()
  assert not storage.exists(path)
  lease_lib.Lease(path, 'scoring').acquire().release()


def _plant(path, **fields):
  record = {'host': 'elsewhere', 'pid': 1, 'purpose': 'training',
            'heartbeat': lease_lib._now(), 'job_id': None}  # pylint: disable=protected-access
  record.update(fields)
  storage.write_text(path, json.dumps(record))


@pytest.mark.parametrize('fields,kwargs', [
    ({'heartbeat': 0.0}, {}),  # Stale: no heartbeat for ages.
    ({'job_id': 'job-7'}, {'environ': {'CLOUD_ML_JOB_ID': 'job-7'}}),
    ({}, {'break_lease': True}),
])
def test_gcs_lease_is_taken_over_when_its_holder_is_gone(gcs_server, fields,
                                                         kwargs):
  path = 'gs://test-bucket/job/_LEASE'
  _plant(path, **fields)
  break_lease = kwargs.pop('break_lease', False)
  taken = lease_lib.Lease(path, 'training', **kwargs).acquire(
      break_lease=break_lease)
  assert json.loads(storage.read_text(path))['pid'] == os.getpid()
  taken.release()


def test_gcs_lease_of_a_dead_process_on_this_host_is_taken_over(gcs_server):
  finished = subprocess.run([sys.executable, '-c', 'import os; '
                             'print(os.getpid())'], capture_output=True,
                            text=True, check=True)
  path = 'gs://test-bucket/job/_LEASE'
  _plant(path, host=socket.gethostname(), pid=int(finished.stdout))
  lease_lib.Lease(path, 'training').acquire().release()


def test_a_live_gcs_lease_elsewhere_is_refused(gcs_server):
  path = 'gs://test-bucket/job/_LEASE'
  _plant(path)
  with pytest.raises(lease_lib.LeaseError, match='host elsewhere'):
    lease_lib.Lease(path, 'training').acquire()


def test_a_holder_whose_lease_was_taken_over_learns_it(gcs_server):
  path = 'gs://test-bucket/job/_LEASE'
  first = lease_lib.Lease(path, 'training', heartbeat_secs=3600).acquire()
  second = lease_lib.Lease(path, 'training').acquire(break_lease=True)
  first.renew()
  assert first.lost
  with pytest.raises(lease_lib.LeaseError, match='Lost the lease'):
    first.check()
  first.release()  # Must not delete the new holder's lease.
  assert json.loads(storage.read_text(path))['token'] == second._token  # pylint: disable=protected-access
  second.release()
