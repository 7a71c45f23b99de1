import json

from click.testing import CliRunner

from vboxlab.cli import main


def test_labs_and_clean_on_an_empty_folder(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["labs", "--lab-dir", str(tmp_path)])
    assert result.exit_code == 0 and "no labs" in result.output
    result = runner.invoke(main, ["clean", "--lab-dir", str(tmp_path)])
    assert result.exit_code == 0 and "removed 0 lab(s)" in result.output


def test_ssh_to_an_unknown_lab_says_which_labs_exist(tmp_path):
    result = CliRunner().invoke(main, ["ssh", "nolab", "vm", "--lab-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "no lab 'nolab'" in result.output


def test_templates_list_shows_tiny():
    result = CliRunner().invoke(main, ["templates", "list"])
    assert result.exit_code == 0, result.output
    assert "tiny" in result.output


def test_doctor_reports_json(monkeypatch):
    result = CliRunner().invoke(main, ["doctor", "--json"])
    checks = {c["name"]: c for c in json.loads(result.output)}
    assert "qemu" in checks and "KVM" in checks and "kernel netem" in checks
    for check in checks.values():
        assert check["ok"] or check["fix"], check


def test_build_of_an_unknown_template_fails_with_the_known_ones():
    result = CliRunner().invoke(main, ["templates", "build", "nope"])
    assert result.exit_code != 0
    assert "known templates: tiny" in str(result.exception)
