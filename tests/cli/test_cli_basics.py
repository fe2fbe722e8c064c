import pytest

from cxr_cad.cli import COMMANDS, build_parser, main


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "cxr-cad" in capsys.readouterr().out


def test_no_command_is_usage_error():
    assert main([]) == 2


def test_unknown_option_is_usage_error():
    assert main(["--no-such-option"]) == 2


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name, capsys):
    parser = build_parser()
    registered = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert name in registered, f"command {name!r} is not registered"
    assert main([name, "--help"]) == 0
    assert name in capsys.readouterr().out


def test_help_does_not_import_torch():
    """`cxr-cad --help` and every subcommand's parser are built without loading PyTorch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cxr_cad.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
