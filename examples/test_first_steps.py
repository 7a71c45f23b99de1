"""First steps: the ``vm`` fixture gives each test a freshly booted machine."""


def test_run_commands(vm):
    assert vm.succeed("uname -s") == "Linux\n"
    result = vm.execute("ls /nonexistent")
    assert result.rc != 0 and "No such file" in result.stderr


def test_move_files(vm, tmp_path):
    report = tmp_path / "input.txt"
    report.write_text("3\n1\n2\n")
    vm.copy_to(report, "/tmp/input.txt")
    vm.succeed("sort -n /tmp/input.txt > /tmp/sorted.txt")
    vm.copy_from("/tmp/sorted.txt", tmp_path / "sorted.txt")
    assert (tmp_path / "sorted.txt").read_text() == "1\n2\n3\n"
