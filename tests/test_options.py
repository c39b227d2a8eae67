"""The scoring command's flags: Beam's --dry_run read right, unknown flags
refused, and checking the options leaves them as they were."""

import os

from apache_beam.options import pipeline_options
import pytest

from batch_predict import options as options_lib
from tests.helpers import disks
from tests.helpers import image_files


@pytest.mark.parametrize('argv,expected,dry_run', [
    (['--top_k=2'], ['--top_k=2'], False),
    (['--dry_run=True', '--top_k=2'], ['--top_k=2', '--dry_run=True'], True),
    (['--dry_run=yes'], ['--dry_run=True'], True),
    (['--dry_run', '1', '--top_k=2'], ['--top_k=2', '--dry_run=True'], True),
    (['--dry_run=False', '--top_k=2'], ['--top_k=2'], False),
    (['--dry_run=True', '--dry_run=no'], [], False),  # The last one wins.
    (['--dry_run='], [], False),
])
def test_dry_run_is_normalised_before_beam_reads_it(argv, expected, dry_run):
  normalized, is_dry_run = options_lib.normalize_dry_run(argv)
  assert (normalized, is_dry_run) == (expected, dry_run)
  # Beam's runners test the string: only a dry run leaves one to test.
  test_options = pipeline_options.PipelineOptions(normalized).view_as(
      pipeline_options.TestOptions)
  assert bool(test_options.dry_run) == dry_run


def test_a_dry_run_value_that_is_neither_true_nor_false_is_refused():
  with pytest.raises(options_lib.ConfigError,
                     match='--dry_run=maybe: use --dry_run=True or False'):
    options_lib.normalize_dry_run(['--dry_run=maybe'])


def test_unknown_flags_are_found_among_beams_and_the_scorers():
  assert options_lib.unknown_flags([
      '--model_dir=m', '--runner=DirectRunner', '--top_k=2',
      '--direct_num_workers=2', '--num_shards', '3']) == []
  assert options_lib.unknown_flags(['--top-k=3', '--top_k=1', '--outptu=x',
                                    'positional']) == ['--outptu', '--top-k']
  # Beam's parser does not take abbreviations either: --top is no --top_k.
  assert options_lib.unknown_flags(['--top=3']) == ['--top']


def test_checking_the_options_leaves_them_as_they_were(trained_export,
                                                       tmp_path):
  image = tmp_path / 'digit.png'
  image.write_bytes(image_files.encode(image_files.digits(1)[0][0], 'PNG'))
  argv, _ = options_lib.normalize_dry_run([
      f'--model_dir={trained_export}', f'--input={image}',
      f'--output={tmp_path / "scores" / "run"}', '--dry_run=False',
      '--max_batch_size=8'])
  options = pipeline_options.PipelineOptions(argv)
  before = options.get_all_options()
  config = options_lib.build_config(options, argv)
  assert options.get_all_options() == before
  assert config.min_batch_size == config.max_batch_size == 8
  assert config.max_batch_pixels == options_lib.DEFAULT_MAX_BATCH_PIXELS
  assert config.input_size == (28, 28)  # For each image's decoded size.
  assert config.labels == tuple(str(d) for d in range(10))
  assert not options_lib.is_remote_runner(options)
  assert options_lib.is_remote_runner(pipeline_options.PipelineOptions(
      ['--runner=apache_beam.runners.dataflow.DataflowRunner']))


def test_labels_from_folders_names_the_class_folders_of_a_folder_input(
    trained_export, tmp_path):
  for name in ('zebra/a.png', 'ant/b.png'):
    (tmp_path / 'images' / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / 'images' / name).write_bytes(b'x')
  argv = [f'--model_dir={trained_export}', f'--input={tmp_path / "images"}',
          f'--output={tmp_path / "run"}', '--labels_from_folders',
          '--output_format=csv']
  config = options_lib.build_config(pipeline_options.PipelineOptions(argv),
                                    argv)
  assert config.labels_from_folders
  assert config.label_names == ('ant', 'zebra')
  assert config.output_format == 'csv'


def test_model_copies_default_to_the_gpus_each_dataflow_worker_gets():
  def gpus(*flags):
    return options_lib.gpus_per_worker(pipeline_options.PipelineOptions(
        list(flags)))
  assert gpus() == 0  # CPU workers: one model per process, as before.
  assert gpus('--dataflow_service_options=worker_accelerator='
              'type:nvidia-l4;count:2;install-nvidia-driver') == 2
  assert gpus('--dataflow_service_options=enable_prime',
              '--dataflow_service_options=worker_accelerator='
              'type:nvidia-tesla-t4;install-nvidia-driver') == 1


def _beam_flag_names():
  """Every flag of Beam's own PipelineOptions classes (not the scorer's)."""
  parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)  # pylint: disable=protected-access
  for cls in pipeline_options.PipelineOptions.__subclasses__():
    if cls is not options_lib.ScoringOptions:
      cls._add_argparse_args(parser)  # pylint: disable=protected-access
  return [name for action in parser._actions  # pylint: disable=protected-access
          for name in action.option_strings if name.startswith('--')]


def test_no_beam_flag_looks_like_a_misspelt_scoring_flag():
  # check_flags refuses a flag within a typo of a scoring flag before Beam
  # is imported: that must never be one of Beam's own.
  scoring = options_lib.scoring_flag_names()
  beam_flags = _beam_flag_names()
  assert '--runner' in beam_flags and '--model_dir' not in beam_flags
  assert options_lib.misspelt_flags(beam_flags, scoring) == []
  assert options_lib.misspelt_flags(['--modle_dir=x', '--top-k', '--runner'],
                                    scoring) == [
                                        '--modle_dir (did you mean '
                                        '--model_dir?)',
                                        '--top-k (did you mean --top_k?)']


@pytest.mark.parametrize('argv, message', [
    (['--input=x', '--output=o'], 'Missing --model_dir'),
    (['--model_dir=m', '--input=x', '--output=o', '--num_shards=0'],
     '--num_shards must be at least 1'),
    (['--model_dir=m', '--input=x', '--output=o', '--top_k=two'],
     "argument --top_k: invalid int value: 'two'"),
    (['--model_dir=m', '--input=x', '--output=o', '--model_copies=-1'],
     '--model_copies must be at least 0'),
    (['--model_dir=m', '--input=x', '--output=o', '--output_format=xml'],
     '--output_format=xml: use one of'),
])
def test_check_flags_refuses_bad_scoring_flags_without_beam(argv, message):
  with pytest.raises(options_lib.ConfigError, match=message):
    options_lib.check_flags(argv)


def test_the_input_format_default_is_the_inputs_modules():
  from batch_predict import inputs  # pylint: disable=g-import-not-at-top
  from batch_predict import manifests  # pylint: disable=g-import-not-at-top
  assert options_lib.ScoringOptions([]).input_format == inputs.AUTO
  assert (options_lib.ScoringOptions([]).uri_column ==
          manifests.DEFAULT_URI_COLUMN)


def test_an_output_folder_means_a_prefix_inside_it(tmp_path):
  folder = tmp_path / 'scores_here'
  assert options_lib.output_prefix(f'{folder}/') == f'{folder}/scores'
  folder.mkdir()
  assert options_lib.output_prefix(str(folder)) == f'{folder}/scores'
  assert options_lib.output_prefix(str(tmp_path / 'run')) == str(
      tmp_path / 'run')


@pytest.mark.slow  # 3.0 s here: over the fast tier's ~1.5 s a test.
def test_output_with_a_trailing_slash_is_written_inside_it(trained_export,
                                                           tmp_path):
  from apache_beam.testing import test_pipeline  # pylint: disable=g-import-not-at-top
  from batch_predict import outputs  # pylint: disable=g-import-not-at-top
  from batch_predict import pipeline  # pylint: disable=g-import-not-at-top
  image = tmp_path / 'digit.png'
  image.write_bytes(image_files.encode(image_files.digits(1)[0][0], 'PNG'))
  pipeline.run([f'--model_dir={trained_export}', f'--input={image}',
                f'--output={tmp_path / "out"}/', '--num_shards=1'],
               test_pipeline=test_pipeline.TestPipeline())
  assert sorted(os.listdir(tmp_path / 'out')) == [
      'scores-errors-00000-of-00001.jsonl',
      'scores-predictions-00000-of-00001.jsonl']
  assert [r['uri'] for r in outputs.read_records(
      str(tmp_path / 'out' / 'scores'), outputs.PREDICTIONS)] == [str(image)]
  assert not [name for name in os.listdir(tmp_path) if name.startswith(
      'out-')], 'nothing beside the folder'


def test_an_unwritable_output_place_fails_before_any_work(tmp_path):
  with disks.read_only_folder(str(tmp_path / 'read_only')) as folder:
    with pytest.raises(options_lib.ConfigError,
                       match=f'cannot create files under {folder}'):
      options_lib.check_flags(['--model_dir=m', '--input=x',
                               f'--output={folder}/new/run'])
