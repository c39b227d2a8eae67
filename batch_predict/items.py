"""One input on its way through the scoring pipeline.

Listing makes an `Item` for every input it finds (or an error record for an
entry it cannot carry on as one); reading fills in its bytes, the header
check its size; the model scores its bytes, keyed by the item without them,
so that everything the input came with reaches its output record:

* `uri`: the input's id in every record (the file's URI; for a TFRecord
  input `image/key`, `image/filename` or `SHARD#INDEX`).
* `data`: the encoded image, once read (TFRecord inputs carry it from the
  start; None before reading, and in the key the model's result carries).
* `label`: the true label's name when the input is labelled (the parent
  folder with `--labels_from_folders`, a manifest's `label` column, a
  TFRecord's `image/class/label`), else None. It feeds evaluation and
  embeddings, and is the records' `true_label` (their `label` is the
  predicted class).
* `fields`: a manifest row's other columns, as (name, value) pairs in the
  manifest's order; they come back unchanged in the input's record.
* `pixels`: width x height from the header check (0 before it), which
  bounds a batch's decoded size: the size the model decodes the image to
  (a large JPEG's decoder scales it down: `artifact.decoded_size`).
"""

from typing import NamedTuple, Optional


class Item(NamedTuple):
  """One input: see the module docstring."""
  uri: str
  data: Optional[bytes] = None
  label: Optional[str] = None
  fields: tuple = ()
  pixels: int = 0


def as_item(element):
  """A URI (str), an Item or an Item's plain tuple (`as_tuple`) -> an Item."""
  if isinstance(element, Item):
    return element
  if isinstance(element, tuple):
    return Item._make(element)
  return Item(element)


def as_tuple(element):
  """An Item -> its fields as a plain tuple; anything else as it is.

  What crosses a shuffle: Beam's default coder encodes tuples of strings,
  bytes and numbers itself, but pickles an Item (a class it does not know),
  which made redistributing 20,000 listed items cost 30 us each instead of
  5 (Beam 2.77, in-process FnApiRunner).
  """
  return tuple(element) if isinstance(element, Item) else element
