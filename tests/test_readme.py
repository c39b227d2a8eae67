"""The README says what the code does: commands, flags, config files."""

import os
import re
import shlex

from trainer import config as config_lib
from tests import helpers


def _read(name):
  with open(os.path.join(helpers.REPO, name)) as f:
    return f.read()


def _section(readme, title):
  start = readme.index(f'\n## {title}\n')
  end = readme.find('\n## ', start + 1)
  return readme[start:end if end != -1 else len(readme)]


def _bash_blocks(text):
  return re.findall(r'```bash\n(.*?)```', text, re.S)


def test_setup_has_exactly_two_commands_and_ci_runs_the_second():
  blocks = _bash_blocks(_section(_read('README.md'), 'Set-up'))
  assert len(blocks) == 2
  main_job, tests = (' '.join(b.replace('\\\n', ' ').split()) for b in blocks)
  assert main_job.startswith('pip install -e . && python -m trainer.task')
  assert tests == "pip install -e '.[test]' && python -m pytest"
  ci_lines = [line.strip() for line in _read('.ci/run').splitlines()]
  assert tests in ci_lines, '.ci/run must run the README test command as is'


def test_flag_reference_is_the_generated_one():
  flags = _section(_read('README.md'), 'Flags')
  assert config_lib.markdown_reference() in flags, (
      'Regenerate the table: python -c "from trainer import config; '
      'print(config.markdown_reference())"')


def _commands(readme, module):
  for block in _bash_blocks(readme):
    for line in block.replace('\\\n', ' ').split('\n'):
      for part in line.split('&&'):
        words = shlex.split(part, comments=True)
        if module in words:
          yield words[words.index(module) + 1:]


def test_trainer_commands_use_real_flags_and_config_files():
  readme = _read('README.md')
  known = set(config_lib.FIELDS) | {'config', 'helpfull'}
  seen = 0
  for args in _commands(readme, 'trainer.task'):
    seen += 1
    for arg in args:
      if not arg.startswith('--'):
        continue
      name, _, value = arg[2:].partition('=')
      assert name in known, f'README uses unknown flag --{name}'
      if name == 'config':
        assert os.path.exists(os.path.join(helpers.REPO, value)), value
  assert seen >= 5


def test_config_files_named_in_the_readme_exist():
  for path in set(re.findall(r'config/[\w/]+\.yaml', _read('README.md'))):
    assert os.path.exists(os.path.join(helpers.REPO, path)), path


def test_every_shipped_config_is_mentioned_or_extends_one_that_is():
  readme = _read('README.md')
  config_dir = os.path.join(helpers.REPO, 'config')
  for name in os.listdir(config_dir):
    if name.endswith('.yaml') and f'config/{name}' not in readme:
      values = config_lib.load_file(os.path.join(config_dir, name))
      text = _read(os.path.join('config', name))
      assert 'extends:' in text and values, (
          f'config/{name} is neither in the README nor a variant of one')
