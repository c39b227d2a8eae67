"""`--evaluate`: the evaluation report of a scoring run over labelled inputs.

  (scored, errors) -> Evaluate -> PREFIX-evaluation.json, PREFIX-evaluation.png

The report is `trainer.evaluation`'s (the one implementation the trainer and
`trainer.evaluate` use), built by a Beam combiner, `EvaluateFn`, never by
collecting predictions in one place: each worker counts its share into an
`evaluation.Counts` (confusion matrix, top-k hits, calibration bins: sums
that merge by addition; the most confident mistakes: a bounded list kept in
one fixed order), and the runner merges the partial counts. Its ids are
the inputs' URIs.

Not every scored image is evaluated: those without a label (no class folder)
and those whose label is not one of the model's are counted in
`not_evaluated`, with the error records (which were never scored).

Both files are staged in the run's staging folder and published with the
shards, by `transforms.PublishOutputs` (`outputs.publish`): a failed run
leaves the previous report as it was.
"""

import apache_beam as beam
import numpy as np

from batch_predict import outputs
from trainer import evaluation
from trainer import evaluation_charts
from trainer import storage

# Images counted one by one are added to the counts in batches of this
# many: numpy's per-call overhead is larger than the counting of one image.
_ADD_BATCH = 512


class _Accumulator:
  """An EvaluateFn's partial result: counts, plus images not yet added."""

  def __init__(self, labels):
    self.counts = evaluation.Counts(labels)
    self.pending = []  # (uri, label index, probabilities)
    self.unlabelled = 0
    self.unknown_label = 0

  def flush(self):
    if self.pending:
      uris, true, probabilities = zip(*self.pending)
      self.counts.add(np.stack(probabilities), np.array(true), list(uris))
      self.pending = []
    return self


class EvaluateFn(beam.CombineFn):
  """(uri, label name or None, probabilities) -> the evaluation report."""

  def __init__(self, labels):
    super().__init__()
    self._labels = tuple(labels)
    self._index = {name: index for index, name in enumerate(self._labels)}

  def create_accumulator(self):
    return _Accumulator(self._labels)

  def add_input(self, accumulator, element):
    uri, label, probabilities = element
    if label is None:
      accumulator.unlabelled += 1
    elif label not in self._index:
      accumulator.unknown_label += 1
    else:
      accumulator.pending.append((uri, self._index[label], probabilities))
      if len(accumulator.pending) >= _ADD_BATCH:
        accumulator.flush()
    return accumulator

  def merge_accumulators(self, accumulators):
    merged = None
    for accumulator in accumulators:
      accumulator.flush()
      if merged is None:
        merged = accumulator
        continue
      merged.counts.merge(accumulator.counts)
      merged.unlabelled += accumulator.unlabelled
      merged.unknown_label += accumulator.unknown_label
    return merged if merged is not None else self.create_accumulator()

  def compact(self, accumulator):
    return accumulator.flush()

  def extract_output(self, accumulator):
    accumulator.flush()
    report = accumulator.counts.report()
    report['not_evaluated'] = {'unlabelled': accumulator.unlabelled,
                               'unknown_label': accumulator.unknown_label}
    return report


class _StageReportFn(beam.DoFn):
  """report -> its JSON and PNG in the run's staging folder; yields paths."""

  def __init__(self, prefix, run_id):
    super().__init__()
    self._prefix = prefix
    self._staging = outputs.staging_folder(prefix, run_id)

  def _staged(self, suffix):
    return storage.join(self._staging, storage.basename(
        outputs.single_file_path(self._prefix, suffix)))

  def process(self, report, error_count):
    report['not_evaluated']['errors'] = error_count
    json_suffix, png_suffix = outputs.EVALUATION_FILES
    path = self._staged(json_suffix)
    storage.write_json(path, report)
    yield path
    png = evaluation_charts.render_report(
        report, storage.basename(self._prefix))
    if png is not None:  # Without matplotlib: the JSON only.
      path = self._staged(png_suffix)
      storage.write_bytes(path, png)
      yield path


class Evaluate(beam.PTransform):
  """(scored, error records) -> the staged paths of the report's files."""

  def __init__(self, labels, prefix, run_id):
    """Args:
      labels: the model's labels, in its output order.
      prefix: the --output prefix.
      run_id: the run's id (its staging folder).
    """
    super().__init__()
    self._labels = tuple(labels)
    self._prefix = prefix
    self._run_id = run_id

  def expand(self, inputs):
    scored, error_records = inputs
    error_count = (error_records
                   | 'CountErrors' >> beam.combiners.Count.Globally())
    return (scored
            | 'Combine' >> beam.CombineGlobally(EvaluateFn(self._labels))
            | 'Stage' >> beam.ParDo(_StageReportFn(self._prefix, self._run_id),
                                    beam.pvalue.AsSingleton(error_count)))
