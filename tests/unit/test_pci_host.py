"""PCI configuration mechanism #1 with no devices (PCI Local Bus 3.0, 3.2.2.3.2), no CPU."""
from vmm.bus import Bus
from vmm.devices.pci_host import PciHostNoDevices, config_fields


def board():
    host = PciHostNoDevices()
    bus = Bus("pio")
    bus.insert(host, 0xCF8, 8)
    return host, bus


def test_linux_type1_probe_reads_back_the_address():
    host, bus = board()
    bus.write(0xCF8, 4, 0x80000000)
    assert bus.read(0xCF8, 4) == 0x80000000
    bus.write(0xCF8, 4, 0x12345678)
    assert bus.read(0xCF8, 4) == 0x12345678


def test_every_configuration_read_is_no_device():
    host, bus = board()
    bus.write(0xCF8, 4, 0x80000000 | 3 << 11)          # bus 0, device 3, vendor ID
    assert bus.read(0xCFC, 4) == 0xFFFFFFFF
    assert bus.read(0xCFC, 2) == 0xFFFF and bus.read(0xCFE, 2) == 0xFFFF
    assert bus.read(0xCFF, 1) == 0xFF
    bus.write(0xCFC, 4, 0)                              # dropped
    assert bus.read(0xCFC, 4) == 0xFFFFFFFF
    assert host.accesses[0] == (0, 3, 0, 0) and host.accesses[2] == (0, 3, 0, 2)


def test_narrow_accesses_to_the_address_bytes_are_not_the_register():
    host, bus = board()
    bus.write(0xCF8, 4, 0x80001000)
    bus.write(0xCFB, 1, 0x00)                           # mechanism #2 probing writes here
    assert bus.read(0xCF8, 4) == 0x80001000 and bus.read(0xCF8, 1) == 0xFF


def test_config_fields():
    assert config_fields(0x80FF_F8FC) == (True, 0xFF, 31, 0, 0xFC)
    assert config_fields(0x0000_0701) == (False, 0, 0, 7, 0)
