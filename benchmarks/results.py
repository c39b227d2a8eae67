"""benchmarks/RESULTS.md: each benchmark script owns one `## ` section.

A script prints its table and calls `write_section`, which replaces its own
section and leaves the other scripts' sections as they are.
"""

import os
import platform
import re

RESULTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            'RESULTS.md')


def replace_section(document, title, body):
  """Puts `title` + `body` in a Markdown document, replacing that section.

  The section runs from its `## ` heading to the next `## ` heading; the
  rest of the document is kept as it is.
  """
  section = f'{title}\n\n{body.strip()}\n'
  pattern = re.compile(rf'^{re.escape(title)}\n.*?(?=^## |\Z)',
                       re.MULTILINE | re.DOTALL)
  if pattern.search(document):
    return pattern.sub(lambda _: section + '\n', document, count=1).rstrip(
        '\n') + '\n'
  if not document.strip():
    return f'# Benchmark results\n\n{section}'
  return document.rstrip('\n') + f'\n\n{section}'


def write_section(title, body, path=RESULTS_PATH):
  """Prints the section and writes it into `path`; returns the path."""
  print(f'\n{title}\n\n{body}\n')
  document = ''
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      document = f.read()
  with open(path, 'w', encoding='utf-8') as f:
    f.write(replace_section(document, title, body))
  print(f'Wrote {path}')
  return path


def machine():
  """One line about where the figures were measured: the CPU model and
  whether it has AVX-512 (and bfloat16), which change TensorFlow's speed."""
  return (f'{cpu()}, {os.cpu_count()} CPU cores, Python '
          f'{platform.python_version()}, {platform.machine()}')


def cpu(cpuinfo='/proc/cpuinfo'):
  """E.g. 'AMD EPYC (AVX-512 with bfloat16)'."""
  try:
    with open(cpuinfo, encoding='utf-8') as f:
      text = f.read()
  except OSError:
    return platform.processor() or 'unknown CPU'
  name = re.search(r'^model name\s*:\s*(.+)$', text, re.M)
  flags = re.search(r'^flags\s*:\s*(.+)$', text, re.M)
  flags = set(flags.group(1).split()) if flags else set()
  vector = ('AVX-512 with bfloat16' if 'avx512_bf16' in flags else
            'AVX-512' if 'avx512f' in flags else
            'AVX2, no AVX-512' if 'avx2' in flags else 'no AVX2')
  return f'{name.group(1).strip() if name else "unknown CPU"} ({vector})'


def markdown_table(header, rows):
  """A Markdown table; numbers right-aligned."""
  def cell(value):
    return f'{value:,}' if isinstance(value, int) else str(value)
  lines = ['| ' + ' | '.join(header) + ' |',
           '| ' + ' | '.join('---:' if i else '---'
                             for i in range(len(header))) + ' |']
  lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)
