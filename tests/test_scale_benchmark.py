"""The scale benchmark's bookkeeping (not its runs)."""

import argparse

from benchmarks import scale


def test_steady_state_is_the_rate_of_the_difference_between_two_sizes():
  # Start-up and everything else that does not grow with the input cancel:
  # 40,000 more images in 20 more seconds is 2,000 images/s.
  measured = {'small': [(4.0, 10.0), (6.0, 14.0), (5.0, 12.0)],
              'large': [(5.0, 33.0), (5.0, 32.0), (5.0, 31.0)],
              'model': [2500.0, 1500.0, 2000.0]}
  found = scale.figures(measured, images=10_000, large_images=50_000)
  assert found['startup'] == 5.0
  assert found['steady'] == 2000.0
  assert found['model'] == 2000.0
  assert found['ratio'] == 1.0


def test_the_report_has_the_two_figures_and_the_glob_manifest_table():
  args = argparse.Namespace(quick=True, images=1_000, large_images=3_000,
                            scale_images=2_000, runs=1)
  measured = {'small': [(4.2, 9.0)], 'large': [(4.4, 11.0)],
              'model': [2000.0]}
  found = scale.figures(measured, args.images, args.large_images)
  text = scale.report(args, {'glob': (5.0, 12.5), 'manifest': (4.5, 11.0)},
                      found, measured, minutes=2)
  assert '| start-up: command to first scored image (s) | 4.2 | at most 5 |' \
      in text
  assert '/ model alone (decode + predict) | 0.50 | at least 0.9 |' in text
  assert '| glob | 2,000 | 5.0 | 12.5 |' in text
  assert '| manifest | 2,000 | 4.5 | 11.0 |' in text


def test_the_manifest_lists_every_png_relative_to_its_folder(tmp_path):
  for name in ('b.png', 'a.png', 'notes.txt'):
    (tmp_path / name).write_bytes(b'x')
  path = scale.write_manifest(str(tmp_path))
  assert open(path).read() == 'uri,id\na.png,0\nb.png,1\n'
