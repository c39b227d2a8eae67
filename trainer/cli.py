"""What both commands do at their entry points before and around real work.

`python -m trainer.task` and `python -m batch_predict.pipeline` share three
things here: an error a user can act on is printed as one line (`one_line`),
including the errors of Google Cloud's client libraries that a missing
bucket or missing credentials raise from deep inside a write
(`cloud_error_line`); and TensorFlow's C++ start-up chatter is kept off the
terminal (`quiet_stderr`).

It imports nothing heavy: both commands check their flags with it before
TensorFlow or Beam is imported.
"""

import contextlib
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
def quiet_stderr(replay=False):
  """Sends what C++ code writes to file descriptor 2 to a temporary file.

  TensorFlow's import and first device use print CUDA and oneDNN notes on
  machines without a GPU whatever TF_CPP_MIN_LOG_LEVEL says (measured: only
  redirecting fd 2 hides them). They are written back to stderr when
  `replay` is true (--verbosity asked for them) or when the block raises.

  Args:
    replay: write what was captured back to stderr at the end.

  Yields:
    None.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    failed = False
    try:
      yield
    except BaseException:
      failed = True
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if replay or failed:
        captured.seek(0)
        os.write(2, captured.read())
