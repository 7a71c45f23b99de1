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
    assert result.exit_code == 2
    assert "vboxlab: error: unknown template 'nope'; known templates: debian-12, dev-c, dev-node, "\
           "dev-python, dev-web, netlab, " \
           "tiny" in result.output


def test_the_template_repository_commands(tmp_path, monkeypatch):
    from vboxlab.templates import TemplateRepository

    from .test_repository import install

    monkeypatch.setenv("VBOXLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VBOXLAB_PINS", str(tmp_path / "pins.lock"))
    repo = TemplateRepository()
    for version in ("1.0.0", "1.1.0", "2.0.0"):
        install(repo, "shared", version)
    runner = CliRunner()

    def ok(*argv):
        result = runner.invoke(main, list(argv))
        assert result.exit_code == 0, (argv, result.output, result.exception)
        return result.output

    listed = ok("templates", "list")
    assert "shared\t1.0.0\tbuilt" in listed and "shared\t2.0.0" in listed
    assert "tiny\t1.0.0" in listed  # the definitions are listed too
    assert "sha256" in ok("templates", "inspect", "shared>=1.1,<2")
    assert json.loads(ok("templates", "inspect", "shared@1.0.0", "--json"))["version"] == "1.0.0"
    assert "pinned shared to 1.1.0" in ok("templates", "pin", "shared>=1.1,<2")
    assert "shared\t1.1.0 (pinned)\t2.0.0" in ok("templates", "outdated")
    assert "would remove shared 1.0.0" in ok("templates", "prune", "--dry-run")
    assert "removed shared 1.0.0" in ok("templates", "prune")
    archive = tmp_path / "shared.tar.gz"
    assert "shared 2.0.0" in ok("templates", "export", "shared@2.0.0", "-o", str(archive))
    assert "removed shared 2.0.0" in ok("templates", "remove", "shared@2.0.0")
    assert "shared 2.0.0: installed" in ok("templates", "import", str(archive))
    bad = runner.invoke(main, ["templates", "remove", "shared"])
    assert bad.exit_code != 0 and "give NAME@VERSION" in bad.output


def test_the_iso_commands(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "hello.txt").write_text("hi\n")
    runner = CliRunner()
    built = runner.invoke(main, ["iso", "build", str(tmp_path / "src"), "-o",
                                 str(tmp_path / "out.iso"), "--label", "CLI_TEST"])
    assert built.exit_code == 0, built.output
    assert "1 files" in built.output and (tmp_path / "out.iso").is_file()
    (tmp_path / "user-data").write_text("#cloud-config\npackages: [nginx]\n")
    (tmp_path / "net.yaml").write_text("version: 2\nethernets: {eth0: {dhcp4: true}}\n")
    seed = runner.invoke(main, ["iso", "seed", "-o", str(tmp_path / "seed.iso"), "--user-data",
                                str(tmp_path / "user-data"), "--network-config",
                                str(tmp_path / "net.yaml"), "--hostname", "web"])
    assert seed.exit_code == 0, seed.output
    (tmp_path / "net.yaml").write_text("ethernets: {}\n")
    bad = runner.invoke(main, ["iso", "seed", "-o", str(tmp_path / "seed2.iso"), "--user-data",
                               str(tmp_path / "user-data"), "--network-config",
                               str(tmp_path / "net.yaml")])
    assert bad.exit_code != 0 and "needs 'version: 1' or 'version: 2'" in bad.output
    label = runner.invoke(main, ["iso", "build", str(tmp_path / "src"), "-o",
                                 str(tmp_path / "x.iso"), "--label", "no spaces"])
    assert label.exit_code != 0 and "characters ISO 9660 does not allow" in label.output
