"""The PC around the CPU as a guest finds it: firmware state and boot loaders, and host input.

Booting (issue 11). Each loader writes guest memory only (anything with ``size``,
``write(addr, data)``: an ``emu.memory.GuestMemory``) and returns a ``HandOver`` describing the
CPU state to start in; the boot path applies it (``handover.apply(cpu)`` for an ``emu.cpu.Cpu``,
or field by field). Every refusal is a ``handover.BootError`` (a ``ValueError``) with a one-line
message naming the file: the CLI prints it and exits with status 2.

- A Multiboot v1 kernel (QEMU's ``-kernel K -append ARGS -initrd "M1 args" -initrd M2``)::

      from vmm.pc.multiboot import Module, boot_multiboot
      boot = boot_multiboot(vm.memory, "K", cmdline="ARGS",
                            modules=[Module.from_spec("M1 args"), Module.from_spec("M2")])
      boot.handover.apply(cpu)   # 32-bit flat protected mode, EAX = 0x2BADB002, EBX = MBI

  It also installs the BIOS data area and MP tables (``bios.install_firmware_tables``).
  ``boot.kernel``/``boot.modules``/``boot.info`` are the ranges written; ``boot.handover.notes``
  the things worth logging.
- The first hard disk, like a BIOS::

      from vmm.pc.bios import boot_disk
      handover = boot_disk(vm.memory, "xv6.img")   # sector 0 at 0x7C00, real mode, DL = 0x80
      handover.apply(cpu)

  The board programs its 8259s with ``bios.PIC_INIT_SEQUENCE`` (vector bases 0x08/0x70) and
  gives its IOAPIC/LAPIC the IDs in ``bios.MpConfig`` (0 and 0 by default, as QEMU's).
- Recognising a file and the debugger's symbols: ``elf.is_elf(data)``, ``elf.symbols(path)``.
"""
