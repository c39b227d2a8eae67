"""What both commands do at their entry points before and around real work.

`python -m trainer.task` and `python -m batch_predict.pipeline` share these
here: an error a user can act on is printed as one line (`one_line`),
including the errors of Google Cloud's client libraries that a missing
bucket or missing credentials raise from deep inside a write
(`cloud_error_line`); TensorFlow's C++ start-up chatter is kept off the
terminal (`quiet_stderr`), and so are the libraries' own INFO lines
(`hide_library_logs`), unless --verbosity=1 asks for them; and Python's
cyclic garbage collector waits until start-up is over
(`pause_garbage_collection`).

It imports nothing heavy: both commands check their flags with it before
TensorFlow or Beam is imported.
"""

import contextlib
import gc
import importlib.util
import logging
import os
import re
import sys
import tempfile

# What a failed Google Cloud request most likely means, by HTTP status.
_HTTP_HINTS = {
    401: 'the credentials were refused; run `gcloud auth application-default '
         'login`, or set GOOGLE_APPLICATION_CREDENTIALS',
    403: 'these credentials may not use it; grant them access or use '
         'another bucket',
    404: 'check that the bucket exists and that the path is spelled right',
}
_CREDENTIALS_HINT = (
    'Run `gcloud auth application-default login`, or set '
    'GOOGLE_APPLICATION_CREDENTIALS to a service-account key file.')


# Whether pause_garbage_collection turned the collector off.
_GC_PAUSED = False


def pause_garbage_collection():
  """Turns Python's cyclic garbage collector off for a command's start-up.

  Importing TensorFlow and Beam (and Keras), loading a SavedModel and
  building a pipeline create hundreds of thousands of objects that live as
  long as the process (the scorer's start-up leaves 450,000 that the
  collector tracks). The collector starts a collection every few hundred net
  allocations and a full one whenever the survivors have grown by a
  quarter, and each full one walks every object made so far: 7 full
  collections took 1.0 s of the scorer's 5-6 s start-up here, the trainer's
  1.1 s, and the one the interpreter runs at exit 0.3-0.4 s more (AMD EPYC,
  measured with `gc.callbacks`). They found almost nothing to free (361
  objects in all). Call `resume_garbage_collection` once start-up is over.
  A no-op if the collector is already off.
  """
  global _GC_PAUSED
  if gc.isenabled():
    gc.disable()
    _GC_PAUSED = True


def resume_garbage_collection():
  """Ends `pause_garbage_collection`: what start-up made is frozen
  (`gc.freeze`: never walked again, at exit neither) and the collector is
  turned back on, for the work's own short-lived objects. A no-op unless
  the collector was paused (a test calling a command's `run`).
  """
  global _GC_PAUSED
  if _GC_PAUSED:
    _GC_PAUSED = False
    gc.freeze()
    gc.enable()


def one_line(message):
  """`message` (an error or text) with its lines joined by spaces."""
  return ' '.join(line.strip() for line in str(message).splitlines()
                  if line.strip())


def _causes(error):
  """`error` and the errors it was raised from (`raise ... from`)."""
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def cloud_error_line(error):
  """One line for an error of Google Cloud's clients, or None.

  google-cloud-storage raises `google.api_core` errors (a missing bucket is a
  404 on the first write) and google-auth raises its own for credentials
  that are missing or refused; both carry the whole HTTP response. The
  commands print this line instead of their 60-90-line tracebacks.

  Args:
    error: any exception (its causes are looked at too).

  Returns:
    A one-line message naming the bucket and what to do, or None when the
    error is not one of theirs.
  """
  try:
    from google.api_core import exceptions as api_exceptions  # pylint: disable=g-import-not-at-top
    from google.auth import exceptions as auth_exceptions  # pylint: disable=g-import-not-at-top
  except ImportError:  # Without the clients, nothing can have raised theirs.
    return None
  for cause in _causes(error):
    if isinstance(cause, auth_exceptions.GoogleAuthError):
      return (f'Google Cloud credentials failed for gs:// paths: '
              f'{_first_sentence(cause)}. {_CREDENTIALS_HINT}')
    if isinstance(cause, api_exceptions.GoogleAPICallError):
      return _api_error_line(cause)
  return None


def _api_error_line(error):
  bucket = re.search(r'/b/([^/?\s]+)', str(error))
  where = f' for bucket gs://{bucket.group(1)}' if bucket else ''
  reason = getattr(error, 'reason', None) or type(error).__name__
  hint = _HTTP_HINTS.get(error.code, 'see the Storage section of README.md')
  return f'Google Cloud Storage answered {error.code} {reason}{where}: {hint}.'


def _first_sentence(error):
  text = one_line(error)
  return text.split('. ')[0].rstrip('.') or type(error).__name__


@contextlib.contextmanager
def quiet_stderr(replay=False, expected=()):
  """Sends what C++ code writes to file descriptor 2 to a temporary file.

  TensorFlow's import and first device use print CUDA and oneDNN notes on
  machines without a GPU whatever TF_CPP_MIN_LOG_LEVEL says (measured: only
  redirecting fd 2 hides them). They are written back to stderr when
  `replay` is true (--verbosity asked for them) or when the block raises
  anything but one of `expected` (errors.UserError: a one-line message says
  what to fix, and the notes would only bury it).

  Python's own writes to `sys.stderr` (log lines, tracebacks) still reach
  the terminal: `sys.stderr`, and the logging handlers that hold it, write
  to a copy of the original fd 2 meanwhile.

  Args:
    replay: write what was captured back to stderr at the end.
    expected: exception types that do not replay it.

  Yields:
    None.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  python_stderr = sys.stderr
  terminal = os.fdopen(os.dup(saved), 'w', buffering=1,
                       encoding=getattr(python_stderr, 'encoding', None),
                       errors='backslashreplace')
  handlers = _handlers_writing_to(python_stderr)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    sys.stderr = terminal
    for handler in handlers:
      handler.setStream(terminal)
    failed = False
    try:
      yield
    except BaseException as e:
      failed = not isinstance(e, expected)
      raise
    finally:
      for handler in handlers:
        handler.setStream(python_stderr)
      sys.stderr = python_stderr
      terminal.close()
      os.dup2(saved, 2)
      os.close(saved)
      if replay or failed:
        captured.seek(0)
        os.write(2, captured.read())


def _handlers_writing_to(stream):
  """The logging handlers (root's, and absl's inside its own) on `stream`."""
  found = []
  for handler in logging.getLogger().handlers:
    for candidate in (handler, getattr(handler, 'python_handler', None)):
      if (isinstance(candidate, logging.StreamHandler) and
          candidate.stream is stream):
        found.append(candidate)
  return found


class _LibraryFilter(logging.Filter):
  """Drops records below `level` logged from inside the given folders."""

  def __init__(self, folders, level):
    super().__init__()
    self._folders = folders
    self._level = level

  def filter(self, record):
    return (record.levelno >= self._level or
            not record.pathname.startswith(self._folders))


def hide_library_logs(packages, below=logging.WARNING):
  """Hides what `packages` log below `below`, on every root handler.

  TensorFlow logs its SavedModel internals ("Sharding callback duration",
  "Writing fingerprint", ...) and Beam its runner choices at INFO through
  the same handlers as the commands' own lines, so they are told apart by
  the file that logged them. --verbosity=1 skips this.

  Args:
    packages: top-level package names (not imported here).
    below: the level from which their records are still shown.
  """
  folders = []
  for package in packages:
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.origin:
      folders.append(os.path.dirname(spec.origin) + os.sep)
  library_filter = _LibraryFilter(tuple(folders), below)
  for handler in logging.getLogger().handlers:
    handler.addFilter(library_filter)


# What TensorFlow 2.21's __init__ imports "eagerly" from Keras (below).
_KERAS_EAGER_IMPORT = 'keras.src.optimizers'


def import_tensorflow_without_keras():
  """Imports TensorFlow without the Keras it imports at start-up.

  TensorFlow 2.21's `__init__` imports `keras.src.optimizers`, which is all
  of Keras 3 (and the scikit-learn wrappers, SciPy, ...: 2.5 of the 5.2 s
  `import tensorflow` takes here, measured), only so that Keras registers
  its optimizers for SavedModels that hold them (b/196254385, in that
  `__init__`); it catches an ImportError there. The scorer needs no Keras:
  Contract 2's SavedModel holds a TensorFlow graph only. So the scorer's
  command imports TensorFlow with that one import failing (a None in
  `sys.modules` makes `import` raise ImportError), then removes the block, so
  that a later `import keras` works as usual. TensorFlow has no switch for
  this; a no-op when TensorFlow or Keras is already imported.

  Returns:
    The tensorflow module.
  """
  return _import_without('tensorflow', _KERAS_EAGER_IMPORT, 'keras')


def import_beam_without_pandas():
  """Imports Apache Beam without the pandas it imports at start-up.

  Beam 2.77's `apache_beam.typehints` imports pandas, if it is installed,
  only to register converters for DoFns that process pandas DataFrames in
  batches; it catches an ImportError there. The scorer has no such DoFn,
  and pandas took 0.3-0.4 s of its start-up here (measured). As for Keras,
  the block is lifted afterwards: a later `import pandas` works (pyarrow
  imports it when a Parquet shard is first written). A no-op when Beam or
  pandas is already imported.

  Returns:
    The apache_beam module.
  """
  return _import_without('apache_beam', 'pandas', 'pandas')


def _import_without(name, blocked, unless):
  """Imports `name` while `import blocked` raises ImportError (a None in
  `sys.modules` does that), then lifts the block; a plain import if `name`
  or `unless` is imported already."""
  if name in sys.modules or unless in sys.modules:
    return importlib.import_module(name)
  sys.modules[blocked] = None
  try:
    return importlib.import_module(name)
  finally:
    if sys.modules.get(blocked, 0) is None:
      del sys.modules[blocked]
