"""QEMU's command line as a pure function of the launch: the agent port, CPU and firmware."""

import pytest

from vboxlab.providers.qemu_argv import (
    AGENT_PORT,
    LaunchMedia,
    LaunchNic,
    NicWiring,
    QemuLaunch,
    build_argv,
)


def launch(**changes):
    values = dict(name="web", binary="qemu-system-x86_64", accel="tcg", memory=256, cpus=1,
                  overlay="/l/web/disk.qcow2", base_disk="/t/disk.qcow2", base_format="qcow2",
                  console="/l/web/console.log", qmp="/l/web/qmp.sock", ssh_port=22,
                  kernel="/t/vmlinux", initrd="/l/web/initrd.img", cmdline="console=ttyS0")
    values.update(changes)
    return QemuLaunch(**values)


def option_after(argv, flag):
    return [argv[i + 1] for i, value in enumerate(argv) if value == flag]


def test_the_agent_port_is_a_virtserialport_on_the_labs_socket():
    argv = build_argv(launch(agent="/l/a,b/agent.sock"))
    chardevs = option_after(argv, "-chardev")
    assert "socket,id=agent,path=/l/a,,b/agent.sock,server=on,wait=off" in chardevs
    assert f"virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT}" in \
        option_after(argv, "-device")
    assert "virtserialport" not in " ".join(build_argv(launch()))


def test_the_vms_own_files_come_through_fw_cfg_with_commas_escaped():
    argv = build_argv(launch(initrd="/c/tiny.cpio", vm_files="/l/a,b/vm-files.cpio"))
    assert option_after(argv, "-initrd") == ["/c/tiny.cpio"]
    assert option_after(argv, "-fw_cfg") == ["name=opt/org.vboxlab/vm,file=/l/a,,b/vm-files.cpio"]
    assert option_after(build_argv(launch()), "-fw_cfg") == []
    media = launch(vm_files="/l/w/vm-files.cpio", media=LaunchMedia("/m/b.iso", "cdrom", "bios"))
    assert option_after(build_argv(media), "-fw_cfg") == []  # media carry the files themselves


def test_cpu_and_kernel_firmware_and_what_boot_media_keep():
    argv = build_argv(launch(cpu="qemu64,+rdrand", kernel_firmware="/usr/share/qemu/qboot.rom"))
    assert option_after(argv, "-cpu") == ["qemu64,+rdrand"]
    assert option_after(argv, "-bios") == ["/usr/share/qemu/qboot.rom"]
    media = launch(kernel_firmware="/usr/share/qemu/qboot.rom",
                   media=LaunchMedia("/m/boot.iso", "cdrom", "bios"))
    assert option_after(build_argv(media), "-bios") == []  # SeaBIOS boots the CD
    kvm = build_argv(launch(accel="kvm", cpu="qemu64,+rdrand"))
    assert option_after(kvm, "-cpu") == ["host"]
    # a launch saved before these fields existed builds the command line it always did
    old = launch().to_dict()
    for key in ("agent", "cpu", "kernel_firmware"):
        old.pop(key)
    assert QemuLaunch.from_dict(old) == launch()


def test_a_vhost_user_nic_shares_guest_memory_and_connects_to_the_fabrics_socket():
    nics = (LaunchNic("eth1", "52:54:00:00:00:01", "vhost-user", vhost="/l/a,b/vhost/p3.sock"),
            LaunchNic("eth2", "52:54:00:00:00:02", "fd"))
    argv = build_argv(launch(nics=nics), NicWiring(fds=(9,)))
    assert option_after(argv, "-machine") == ["q35,memory-backend=ram0"]
    assert option_after(argv, "-object") == [
        "memory-backend-memfd,id=ram0,size=256M,share=on"]
    assert "socket,id=vu0,path=/l/a,,b/vhost/p3.sock,reconnect=1" in option_after(argv, "-chardev")
    assert option_after(argv, "-netdev")[1:] == ["vhost-user,id=lab0,chardev=vu0",
                                                 "dgram,id=lab1,local.type=fd,local.str=9"]
    devices = option_after(argv, "-device")
    # without KVM, QEMU 7.2 crashes when a vhost NIC's MSI-X vectors are unmasked: INTx
    assert "virtio-net-pci,netdev=lab0,mac=52:54:00:00:00:01,vectors=0" in devices
    assert "virtio-net-pci,netdev=lab1,mac=52:54:00:00:00:02" in devices
    kvm = build_argv(launch(nics=nics, accel="kvm"), NicWiring(fds=(9,)))
    assert "virtio-net-pci,netdev=lab0,mac=52:54:00:00:00:01" in option_after(kvm, "-device")
    # unplugged (the fabric is gone): the same memory and device, on a stand-in's socket
    unplugged = build_argv(launch(nics=nics), NicWiring(unplugged=True, stand_in=("/v/s",)))
    assert option_after(unplugged, "-machine") == ["q35,memory-backend=ram0"]
    assert "virtio-net-pci,netdev=lab0,mac=52:54:00:00:00:01,vectors=0" in \
        option_after(unplugged, "-device")
    assert "socket,id=vu0,path=/v/s,reconnect=1" in option_after(unplugged, "-chardev")
    assert option_after(unplugged, "-netdev")[1:] == ["vhost-user,id=lab0,chardev=vu0",
                                                      "hubport,id=lab1,hubid=1001"]
    with pytest.raises(ValueError, match="no stand-in socket for lab NIC eth1"):
        build_argv(launch(nics=nics), NicWiring(unplugged=True))
    # a machine without vhost-user NICs keeps private memory (KSM can merge it)
    assert option_after(build_argv(launch()), "-object") == []
