"""`generate` and `batch` name their model with the same flags and one ModelSource, so every model
flag is accepted or refused the same way by both, with the same message, before anything loads."""
import argparse

import pytest

from modelscope_sdxl import cli
from modelscope_sdxl.cli.plugin import SDXLCommand

from hub_fixtures import hub, hub_repos, hub_server  # noqa: F401  (fixtures)

# (model flags, text expected in the error line). 'BASE' is the tiny base folder, 'MISSING' a path.
BAD_MODEL_FLAGS = [
    (['--revision', 'v9'], "--revision applies to a hub model, not to the built-in 'mini' model"),
    (['--model', 'mini', '--revision', 'v9'], "--revision applies to a hub model, not to the built-in 'mini' model"),
    (['--model', 'tiny', '--revision', 'v9'], "not to the built-in 'tiny' model"),
    (['--model', 'BASE', '--revision', 'v9'], 'is a local folder'),
    (['--model', 'MISSING'], 'does not exist'),
    (['--model', 'BASE', '--device', 'tpu'], "device must be 'cpu', 'gpu', 'gpu:N', 'cuda' or 'cuda:N'"),
    (['--model', 'test-owner/no-such-model', '--revision', 'v1.0.0'],
     "'test-owner/no-such-model' at revision 'v1.0.0' is not on the hub"),
]


def _command(kind, flags, tmp_path):
    if kind == 'generate':
        return ['generate', 'a dog', '--out', str(tmp_path / 'out.png'), '--quiet'] + flags
    prompts = tmp_path / 'p.jsonl'
    prompts.write_text('{"text": "a dog"}\n')
    return ['batch', str(prompts), '--out', str(tmp_path / 'out')] + flags


@pytest.mark.parametrize('kind', ['generate', 'batch'])
@pytest.mark.parametrize('flags,expected', BAD_MODEL_FLAGS, ids=[' '.join(f) for f, _ in BAD_MODEL_FLAGS])
def test_generate_and_batch_refuse_a_model_flag_alike(kind, flags, expected, hub, tiny_sdxl, tmp_path,  # noqa: F811
                                                      capsys, monkeypatch):
    monkeypatch.setenv('MODELSCOPE_SDXL_CACHE', str(tmp_path / 'cache'))
    names = {'BASE': tiny_sdxl[0], 'MISSING': str(tmp_path / 'missing')}
    argv = _command(kind, [names.get(f, f) for f in flags], tmp_path)
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('modelscope-sdxl: error: ') and expected in lines[0], lines
    assert not (tmp_path / 'cache').exists(), 'the built-in model was built for a command line that cannot run'
    assert not (tmp_path / 'out.png').exists()


@pytest.mark.parametrize('kind', ['generate', 'batch'])
def test_errors_under_the_modelscope_command_carry_its_name(kind, tmp_path, capsys):
    host = argparse.ArgumentParser(prog='modelscope')
    SDXLCommand.register(host.add_subparsers(dest='command'))
    args = host.parse_args(['sdxl'] + _command(kind, ['--revision', 'v9'], tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        args._command(args).execute()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("modelscope sdxl: error: --revision applies to a hub model, "
                                       "not to the built-in 'mini' model\n")


def test_both_commands_have_the_same_model_flags():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def model_flags(name):
        group = next(g for g in sub.choices[name]._action_groups if g.title == 'model')
        return [(a.option_strings, a.default) for a in group._group_actions]

    assert model_flags('generate') == model_flags('batch')
    assert [flags for flags, _ in model_flags('batch')] == [
        ['--model'], ['--revision'], ['--refiner'], ['--refiner-revision'], ['--device'], ['--dtype'],
        ['--allow-pickle']]
