"""CSV and JSONL manifests: the header checks, rows, bad rows, and reading in
splits."""

import json
import os

import apache_beam as beam
from apache_beam.io import source_test_utils
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import pytest

from batch_predict import inputs
from batch_predict import items
from batch_predict import manifests
from batch_predict import transforms
from tests.helpers import fakes
from tests.helpers import image_files
from trainer import errors


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8', newline='') as f:
    f.write(text)
  return path


@pytest.mark.parametrize('text,uri_column,words', [
    ('id,uri,score\n', 'uri', 'score would collide'),
    ('uri,kind,top_k\n', 'uri', 'kind, top_k would collide'),
    ('path,uri\n', 'path', ' uri would collide'),
    ('id,path\n', 'uri', "no column named 'uri'.*--uri_column"),
    ('uri,id,id\n', 'uri', 'names column.* id more than once'),
    ('\n', 'uri', 'first line is empty'),
])
def test_a_bad_csv_header_is_refused_in_one_line(tmp_path, text, uri_column,
                                                 words):
  path = _write(str(tmp_path / 'm.csv'), text + 'a.png,1,2\n')
  with pytest.raises(manifests.ManifestError, match=words) as raised:
    manifests.read_manifest(path, manifests.CSV, uri_column)
  assert '\n' not in str(raised.value)


def test_the_header_gives_the_columns_passed_through(tmp_path):
  path = _write(str(tmp_path / 'm.csv'), '\ufeffid,path,label,shop\r\n')
  manifest = manifests.read_manifest(path, manifests.CSV, 'path')
  assert manifest.columns == ('id', 'path', 'label', 'shop')
  assert manifest.field_names == ('id', 'shop')
  assert manifest.has_label
  jsonl = _write(str(tmp_path / 'm.jsonl'),
                 '{"uri": "a.png", "id": 3, "true_label": "x"}\n')
  with pytest.raises(manifests.ManifestError, match='true_label would'):
    manifests.read_manifest(jsonl, manifests.JSONL)


def _parse(manifest, text, offset=10):
  return manifests.parse_row(manifest, offset, text.encode('utf-8'))


def test_rows_become_items_with_their_label_and_fields(tmp_path):
  folder = str(tmp_path / 'lists')
  csv_manifest = manifests.read_manifest(
      _write(os.path.join(folder, 'm.csv'), 'id,uri,label,note\n'),
      manifests.CSV)
  assert _parse(csv_manifest, 'id,uri,label,note\n', 0) is None  # Header.
  assert _parse(csv_manifest, '\r\n') is None
  assert _parse(csv_manifest, '7,sub/a.png,cat,"x, ""y"""\r\n') == items.Item(
      os.path.join(folder, 'sub', 'a.png'), label='cat',
      fields=(('id', '7'), ('note', 'x, "y"')))
  assert _parse(csv_manifest, '8,gs://b/c.png,,\n') == items.Item(
      'gs://b/c.png', fields=(('id', '8'), ('note', '')))
  jsonl_manifest = manifests.read_manifest(
      _write(os.path.join(folder, 'm.jsonl'),
             '{"uri": "a.png", "id": 1, "label": "cat", "meta": {"k": 1}}\n'),
      manifests.JSONL)
  assert _parse(jsonl_manifest, '{"uri": "/x/b.png", "id": 2, "label": 5}',
                0) == items.Item('/x/b.png', label='5', fields=(('id', 2),))


@pytest.mark.parametrize('kind,line,words', [
    (manifests.CSV, '7,a.png\n', '2 fields, and the header has 3'),
    (manifests.CSV, '7,a.png,x,y\n', '4 fields'),
    (manifests.CSV, '7,,x\n', "no URI in column 'uri'"),
    (manifests.CSV, '7,  ,x\n', "no URI in column 'uri'"),
    (manifests.JSONL, '{"id": 7}\n', "no URI in column 'uri'"),
    (manifests.JSONL, '{"uri": 3, "id": 7}\n', "no URI in column 'uri'"),
    (manifests.JSONL, '{"uri": "a.png", "extra": 1}\n',
     'extra that the first row does not have'),
    (manifests.JSONL, '[1, 2]\n', 'not a JSON object'),
    (manifests.JSONL, '{"uri": "a.png",\n', 'not JSON'),
])
def test_a_bad_row_is_one_error_naming_its_line(tmp_path, kind, line, words):
  header = 'id,uri,note\n' if kind == manifests.CSV else (
      '{"id": 1, "uri": "a.png", "note": ""}\n')
  path = _write(str(tmp_path / f'm.{kind}'), header)
  manifest = manifests.read_manifest(path, kind)
  with pytest.raises(inputs.ReadError, match=words) as raised:
    _parse(manifest, line, offset=1234)
  assert raised.value.kind == errors.BAD_MANIFEST_ROW
  assert raised.value.uri == f'{path}#byte=1234'
  assert 'at byte 1234' in str(raised.value)
  assert line.strip() in str(raised.value)


def test_the_source_reads_every_line_once_in_any_split(tmp_path):
  lines = ['uri,id\n'] + [f'{i}.png,{"x" * (i % 7)}\n' for i in range(60)]
  path = _write(str(tmp_path / 'm.csv'), ''.join(lines) + 'last.png,no-eol')
  source = manifests.ManifestSource(path)
  whole = source_test_utils.read_from_source(source)
  assert [line.decode() for _, line in whole] == lines + ['last.png,no-eol']
  offsets = [offset for offset, _ in whole]
  assert offsets[0] == 0 and offsets == sorted(offsets)
  with open(path, 'rb') as f:
    content = f.read()
  assert all(content[o:o + len(l)] == l for o, l in whole)
  for bundle_size in (1, 13, 100):
    splits = [(split.source, split.start_position, split.stop_position)
              for split in source.split(desired_bundle_size=bundle_size)]
    assert len(splits) > 1
    source_test_utils.assert_sources_equal_reference_source(
        (source, None, None), splits)


@pytest.mark.slow  # 1.5 s here: over the fast tier's ~1.5 s a test.
def test_csv_and_jsonl_manifests_keep_every_row_and_its_id(tmp_path):
  """Every row in exactly one output, with its id; bad rows name their
  line; relative URIs start at the manifest's folder. Both manifests in
  one pipeline (JSONL ids are the CSV's + 100)."""
  png = image_files.encode(image_files.digits(1)[0][0], 'PNG')
  folder = tmp_path / 'data'
  for name in ('a.png', 'sub/b.png'):
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(png + name.encode())
  csv_text = ('id,uri,label\n'
              '1,a.png,cat\n'
              '2,sub/b.png,\n'
              '3,gone.png,dog\n'
              '4,,cat\n'
              '5,a.png\n'
              '\n'
              '6,"/elsewhere/""odd"" name.png",cat\n')
  jsonl_text = ''.join(json.dumps(row) + '\n' for row in (
      {'uri': 'a.png', 'id': 101, 'label': 'cat'},
      {'uri': 'sub/b.png', 'id': 102},
      {'uri': 'gone.png', 'id': 103, 'label': 'dog'},
      {'id': 104, 'label': 'cat'})) + 'not json\n'
  expected = {}  # id -> (output, uri or None, true label)
  for base in (0, 100):
    expected.update({
        str(base + 1): ('P', str(folder / 'a.png'), 'cat'),
        str(base + 2): ('P', str(folder / 'sub/b.png'), None),
        str(base + 3): ('E', str(folder / 'gone.png'), 'dog'),
        str(base + 4): ('E', None, None)})
  expected['6'] = ('E', '/elsewhere/"odd" name.png', 'cat')
  paths = {kind: _write(str(folder / f'manifest.{kind}'), text)
           for kind, text in ((manifests.CSV, csv_text),
                              (manifests.JSONL, jsonl_text))}
  bad_lines = {f'{paths[manifests.CSV]}#byte={csv_text.index("5,a.png")}':
               '5,a.png',
               f'{paths[manifests.JSONL]}#byte={jsonl_text.index("not")}':
               'not json'}

  def check(found):
    found = found[0]
    by_id = {str(r['id']): (tag, r) for tag, r in found if 'id' in r}
    assert len(by_id) == len([r for _, r in found if 'id' in r])
    assert set(by_id) == set(expected)
    for row_id, (tag, uri, label) in expected.items():
      got_tag, record = by_id[row_id]
      assert got_tag == tag, (row_id, record)
      assert uri is None or record['uri'] == uri, (row_id, record)
      assert record.get('true_label') == label, (row_id, record)
    unnamed = {r['uri']: r for tag, r in found if 'id' not in r}
    assert set(unnamed) == set(bad_lines)
    for uri, line in bad_lines.items():
      assert unnamed[uri]['kind'] == errors.BAD_MANIFEST_ROW
      assert line in unnamed[uri]['error']
    assert len(found) == len(expected) + len(bad_lines)

  with test_pipeline.TestPipeline() as pipeline:
    listed = [
        pipeline | f'List{kind}' >> transforms.ListImages(
            inputs.resolve_input(path),
            manifest=manifests.read_manifest(path, kind))
        for kind, path in paths.items()]
    predictions, failures = (
        listed
        | 'BothManifests' >> beam.Flatten()
        | transforms.ClassifyImages(
            fakes.FakeClassifierHandler(), fakes.DIGITS, top_k=1,
            max_file_bytes=10**6, max_image_pixels=10**6))
    records = ((predictions | 'TagP' >> beam.Map(lambda r: ('P', r)),
                failures | 'TagE' >> beam.Map(lambda r: ('E', r)))
               | 'All' >> beam.Flatten() | beam.combiners.ToList())
    util.assert_that(records, check)
