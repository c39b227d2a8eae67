"""The one base class of errors a user can fix, shared by both commands.

Every error whose cause is the user's to fix (a flag, a config file, a
dataset, an artifact, a busy job dir, one bad input file) derives from
`UserError` and carries a `kind`: a short, stable name that error records,
counters and logs use, and that users filter on. Each command catches
`UserError` in one place and prints its message as one line, without a
traceback; anything else is a bug or a passing failure and keeps its
traceback.

This module imports nothing: the scorer's Dataflow workers load it too.
"""


class UserError(Exception):
  """An error the user can fix; the message says how.

  Subclasses set a class-level `kind`; an instance may carry its own (the
  scorer's per-record errors do).
  """

  kind = 'user_error'

  def __init__(self, message, kind=None):
    super().__init__(message)
    if kind is not None:
      self.kind = kind
