"""Every module of the package imports, and every CLI command registers (catches missing files)."""

import importlib
import pkgutil

import pytest

import openslip
from openslip.cli import COMMANDS, build_parser

MODULES = sorted(m.name for m in pkgutil.walk_packages(openslip.__path__, "openslip."))


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_public_api_names_resolve():
    for name in openslip.__all__:
        assert getattr(openslip, name) is not None


def test_cli_commands_register(capsys):
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([name, "--help"])
        assert done.value.code == 0
        assert f"openslip {name}" in capsys.readouterr().out
