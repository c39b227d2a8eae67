"""One base class for errors a user can fix, and one list of kinds."""

import os
import pickle
import re

from batch_predict import inputs
from tests import helpers
from trainer import errors
from trainer import storage


def test_a_kind_is_the_class_kind_unless_the_instance_says_otherwise():
  class BusyError(errors.UserError):
    kind = 'busy'

  assert BusyError('in use').kind == 'busy'
  assert BusyError('in use', kind='gone').kind == 'gone'
  assert str(BusyError('in use')) == 'in use'
  assert errors.UserError('x').kind == 'user_error'


def test_errors_cross_process_boundaries_with_their_kind_and_details():
  for error in (inputs.ReadError('no such file: ...', errors.NOT_FOUND,
                                 uri='/x/caf\\xe9.png'),
                storage.WriteError('disk full', hard_exit=True)):
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.kind, vars(copy)) == (
        type(error), str(error), error.kind, vars(error))
  assert isinstance(storage.WriteError('x'), OSError)  # Still one, too.


def test_the_scorers_kinds_are_the_readmes_error_kinds():
  with open(os.path.join(helpers.REPO, 'README.md')) as f:
    readme = f.read()
  table = readme[readme.index('| kind | the input is |'):]
  table = table[:table.index('\n\n')]
  documented = set(re.findall(r'^\| `(\w+)`(?:, `(\w+)`)? \|', table, re.M))
  documented = {kind for row in documented for kind in row if kind}
  assert len(errors.SCORING_KINDS) == len(set(errors.SCORING_KINDS))
  assert documented == set(errors.SCORING_KINDS)
