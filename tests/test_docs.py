"""docs/parameters.md and the command line's schema come from the same table the validation uses."""
import json
import os
import subprocess
import sys

from modelscope_sdxl.inputs.schema import json_schema, parameters_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parameters_doc_matches_the_code():
    with open(os.path.join(ROOT, 'docs', 'parameters.md'), encoding='utf-8') as f:
        assert f.read() == parameters_markdown() + '\n', \
            'regenerate with: modelscope-sdxl schema --markdown > docs/parameters.md'


def test_schema_from_the_command_line():
    out = subprocess.run([sys.executable, '-m', 'modelscope_sdxl', 'schema'], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == json_schema()
