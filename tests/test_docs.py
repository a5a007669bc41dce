"""The README and CI stay true: the two commands at the top, and the paths the docs mention."""
import os
import os.path as osp
import re

from conftest import ROOT


def readme_commands():
    text = open(osp.join(ROOT, 'README.md')).read()
    block = re.search(r'```bash\n(.*?)```', text, re.S).group(1)
    return [line.split('#')[0].strip() for line in block.strip().splitlines()]


def test_readme_starts_with_exactly_two_commands():
    commands = readme_commands()
    assert len(commands) == 2
    main_job, tests = commands
    for command in commands:
        assert command.startswith('bash tools/setup_env.sh && '), command  # each sets up the environment
    assert 'tools/quickstart.py' in main_job and 'pytest tests' in tests


def test_ci_runs_the_readme_test_command():
    ci = open(osp.join(ROOT, '.ci', 'run')).read()
    assert readme_commands()[1] in [line.strip() for line in ci.splitlines()]


def test_paths_named_in_the_docs_exist():
    docs = ['README.md'] + [osp.join('docs', name) for name in sorted(os.listdir(osp.join(ROOT, 'docs')))
                            if name.endswith('.md')]
    pattern = re.compile(r'\b((?:tools|configs|docs|evit_mm|tests)/[\w./-]+\.(?:py|sh|md|txt))\b')
    for doc in docs:
        for path in pattern.findall(open(osp.join(ROOT, doc)).read()):
            assert osp.exists(osp.join(ROOT, path)), f'{doc} names {path}, which does not exist'
