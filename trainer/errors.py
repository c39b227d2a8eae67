"""The one base class of errors a user can fix, and the kinds they carry.

Every error whose cause is the user's to fix (a flag, a config file, a
dataset, an artifact, a busy job dir, one bad input file) derives from
`UserError` and carries a `kind`: a short, stable name that error records,
counters and logs use, and that users filter on. Each command catches
`UserError` in one place and prints its message as one line, without a
traceback; anything else is a bug or a passing failure and keeps its
traceback.

The kinds of single inputs and entries are defined here, once, for both
commands: the scorer's error records (`kind`, and the counters
`errors_KIND`) and the trainer's report of what it left out of a dataset
(metrics.json `data.skipped`) use the same name for the same problem.

This module imports nothing: the scorer's Dataflow workers load it too.
"""


class UserError(Exception):
  """An error the user can fix; the message says how.

  Subclasses set a class-level `kind`; an instance may carry its own (the
  scorer's per-record errors do). The constructor keeps the message as the
  only argument, so an instance pickles (to and from a worker) with its
  kind and other attributes.
  """

  kind = 'user_error'

  def __init__(self, message, kind=None):
    super().__init__(message)
    if kind is not None:
      self.kind = kind


# --------------------------------------------------------------------------
# What is wrong with one local entry, from its name and `os.stat` alone
# (trainer/walk.py says which; both commands use these).
NOT_FOUND = 'not_found'
NOT_A_FILE = 'not_a_file'
NOT_A_FOLDER = 'not_a_folder'
SPECIAL_FILE = 'special_file'
DANGLING_LINK = 'dangling_link'
LINK_LOOP = 'link_loop'
INVALID_NAME = 'invalid_name'
NAME_TOO_LONG = 'name_too_long'
PERMISSION_DENIED = 'permission_denied'
READ_FAILED = 'read_failed'
# A folder under the scorer's --input that cannot be listed (the trainer
# reports an unreadable sub-folder of a dataset as PERMISSION_DENIED).
UNREADABLE_FOLDER = 'unreadable_folder'
ENTRY_KINDS = (NOT_FOUND, NOT_A_FILE, NOT_A_FOLDER, SPECIAL_FILE,
               DANGLING_LINK, LINK_LOOP, INVALID_NAME, NAME_TOO_LONG,
               PERMISSION_DENIED, READ_FAILED, UNREADABLE_FOLDER)

# Reading one scorer input (batch_predict/inputs.py).
INVALID_URI = 'invalid_uri'
FILE_TOO_LARGE = 'file_too_large'
# An input's header (batch_predict/image_header.py).
EMPTY_FILE = 'empty_file'
NOT_AN_IMAGE = 'not_an_image'
UNSUPPORTED_FORMAT = 'unsupported_format'
CORRUPT_HEADER = 'corrupt_header'
TOO_MANY_PIXELS = 'too_many_pixels'
ANIMATED = 'animated'
HEADER_KINDS = (EMPTY_FILE, NOT_AN_IMAGE, UNSUPPORTED_FORMAT, CORRUPT_HEADER,
                TOO_MANY_PIXELS, ANIMATED)
# The model's decoder refused an image (the scorer), or the training
# pipeline's decoder did (the trainer leaves it out).
UNDECODABLE = 'undecodable'
# The model returned NaN or infinite probabilities for an image.
NON_FINITE_OUTPUT = 'non_finite_output'

# Every kind of the scorer's error records (README "Error kinds").
SCORING_KINDS = ENTRY_KINDS + (INVALID_URI, FILE_TOO_LARGE) + HEADER_KINDS + (
    UNDECODABLE, NON_FINITE_OUTPUT)

# A file of an image folder whose extension is not an image's: left out
# quietly by the trainer.
OTHER_EXTENSION = 'other_extension'

# A scorer manifest's row that cannot be an input (batch_predict/manifests.py),
# and a TFRecord record that is not a tf.Example with image/encoded.
BAD_MANIFEST_ROW = 'bad_manifest_row'
BAD_RECORD = 'bad_record'
SCORING_KINDS += (BAD_MANIFEST_ROW, BAD_RECORD)
# The model ran out of memory on one image alone (the scorer halves a batch
# that runs out of memory down to single images first).
TOO_LARGE_FOR_MEMORY = 'too_large_for_memory'
SCORING_KINDS += (TOO_LARGE_FOR_MEMORY,)
