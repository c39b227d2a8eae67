"""The transfer learning-curve benchmark's bookkeeping (not its training)."""

from benchmarks import results
from benchmarks import transfer_learning_curve as curve

TITLE = curve.SECTION_TITLE


def test_every_variant_gets_the_same_number_of_steps():
  for examples in (100, 4000):
    budgets = set()
    for variant in curve.VARIANTS:
      settings = curve.digits_settings(variant, examples, 300, '/base/export')
      epochs = settings['epochs'] + settings.get('fine_tune_epochs', 0)
      budgets.add(epochs * settings['steps_per_epoch'])
      assert settings['train_examples'] == examples
      assert ('base_model' in settings) == (variant != 'scratch')
    assert budgets == {300}


def test_results_section_is_added_then_replaced_leaving_others_alone():
  others = '# Benchmark results\n\n## Throughput\n\nkeep me\n'
  added = results.replace_section(others, TITLE, 'first table')
  assert added.startswith(others.rstrip('\n'))
  assert added.endswith(f'{TITLE}\n\nfirst table\n')
  later = added + '\n## Scoring\n\nkeep me too\n'
  replaced = results.replace_section(later, TITLE, 'second table')
  assert 'first table' not in replaced
  assert replaced.count(TITLE) == 1
  assert f'{TITLE}\n\nsecond table\n\n## Scoring\n\nkeep me too\n' in replaced
  assert replaced.startswith(others.rstrip('\n'))


def test_results_file_is_created_when_absent():
  assert results.replace_section('', TITLE, 'table') == (
      f'# Benchmark results\n\n{TITLE}\n\ntable\n')
